"""Where outputs live: local filesystem or any S3-compatible store, behind one Protocol."""
