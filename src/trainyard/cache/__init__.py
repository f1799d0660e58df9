"""Hot keys: worker heartbeats and rate limits. One interface; memory and Redis."""
