"""Identifiers and secrets."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
_lock = threading.Lock()
_last = (0, 0)


def _b32(n: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_job_id() -> str:
    """A ULID-style id: time-ordered (so newest-first is id order), unique without coordination.

    Within one millisecond in one process the random part is incremented, which keeps ids
    monotonic for a single writer; across replicas order within a millisecond is arbitrary.
    """
    global _last
    with _lock:
        ms = int(time.time() * 1000)
        last_ms, last_rand = _last
        rand = last_rand + 1 if ms <= last_ms else int.from_bytes(os.urandom(10), "big") >> 1
        ms = max(ms, last_ms)
        _last = (ms, rand)
    return "j" + _b32(ms, 10) + _b32(rand, 16)


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_lease_token() -> str:
    return secrets.token_hex(16)


def hash_token(token: str) -> str:
    """Tokens are stored only as this hash; a high-entropy token needs no slow KDF."""
    return hashlib.sha256(token.encode()).hexdigest()


TOKEN_ID_PREFIX = "tk_"
TOKEN_ID_HEX = 12


def token_id(token_hash: str) -> str:
    """A token's public id (listed, revoked by): a prefix of its hash, which reveals nothing of it."""
    return TOKEN_ID_PREFIX + token_hash[:TOKEN_ID_HEX]
