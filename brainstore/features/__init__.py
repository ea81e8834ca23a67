"""brainstore.features."""
