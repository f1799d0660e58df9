"""Multipart upload limits: S3's, which every object store here keeps, and which the agent plans by."""

from __future__ import annotations

MIN_PART_SIZE = 5 << 20
"""S3's smallest part (all but the last); the local store enforces it too, so it never drifts."""
MAX_PARTS = 10_000
"""S3's largest part number."""
