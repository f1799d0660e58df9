"""Object storage: log chunks, artifacts, checkpoints, workdir bundles. One interface; local and S3."""
