"""The labels a job's Kubernetes Pod carries, and how their values are made from an attempt.

Shared by the kubernetes executor, which puts them on each Pod, and by the control plane's Fluent Bit
ingest, which checks that a log record's Pod is the one the attempt's lease made before it takes the
record as that attempt's output. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import re

LABEL_WORKER = "trainyard.io/worker"
LABEL_JOB = "trainyard.io/job"
LABEL_ATTEMPT = "trainyard.io/attempt"
LABEL_TEAM = "trainyard.io/team"
LABEL_LEASE = "trainyard.io/lease"
ANNOTATION_JOB = "trainyard.io/job-id"
"""The job id as it is (a label value has a restricted alphabet and 63 characters at most)."""
ANNOTATION_ATTEMPT = "trainyard.io/attempt"

_LABEL_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?")


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def lease_label(token: str) -> str:
    """The lease's label value: a hash of its token (anyone who may list Pods sees labels)."""
    return digest("trainyard-lease", token)[:32]


def label_value(text: str) -> str:
    """``text`` as a label value (63 characters of ``[A-Za-z0-9._-]``, alphanumeric at both ends); a
    value that had to change ends with a hash of the original, so that two never meet."""
    if len(text) <= 63 and _LABEL_VALUE.fullmatch(text):
        return text
    clean = _LABEL_CHARS.sub("-", text)[:50].strip("._-")
    return f"{clean}-{digest(text)[:10]}" if clean else digest(text)[:10]
