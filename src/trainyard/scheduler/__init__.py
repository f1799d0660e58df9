"""Placement as a pure function of a snapshot; the leader loop lives in trainyard.server."""
