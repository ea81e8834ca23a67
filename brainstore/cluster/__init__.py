"""brainstore.cluster."""
