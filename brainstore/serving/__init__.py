"""brainstore.serving."""
