"""Secret values never reach a job's log: each stream's output is masked before it is spooled.

A value may arrive split over two writes (``pri`` then ``vate``), so the end of each write that
could still be the start of a secret is held back until the next write (or the stream's end)
shows whether it is one. Only such a suffix is held, so ordinary output is not delayed.
"""

from __future__ import annotations

from collections.abc import Iterable

MASK = b"***"
MIN_MASKED = 4
"""Shorter values are not masked: masking every "1" or "ab" would wreck the log and hide nothing."""


class SecretMasker:
    def __init__(self, values: Iterable[str]) -> None:
        found = {v.encode() for v in values if len(v) >= MIN_MASKED}
        # Longest first: a secret containing another is masked whole.
        self._secrets = sorted(found, key=lambda s: (-len(s), s))
        self._longest = max((len(s) for s in self._secrets), default=0)
        self._held: dict[int, bytes] = {}

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def feed(self, stream: int, data: bytes) -> bytes:
        """The bytes of ``stream`` that can be written now, masked."""
        buf = self._held.pop(stream, b"") + data
        for s in self._secrets:
            if s in buf:
                buf = buf.replace(s, MASK)
        keep = self._partial_suffix(buf)
        if keep:
            self._held[stream] = buf[-keep:]
            return buf[:-keep]
        return buf

    def flush(self, stream: int) -> bytes:
        """What is held at the stream's end: no secret can complete it any more."""
        return self._held.pop(stream, b"")

    def streams_held(self) -> list[int]:
        return sorted(self._held)

    def _partial_suffix(self, buf: bytes) -> int:
        """Length of the longest end of ``buf`` that a secret starts with (and is shorter than)."""
        best = 0
        floor = max(0, len(buf) - self._longest + 1)
        for s in self._secrets:
            head = s[:1]
            i = buf.find(head, max(floor, len(buf) - len(s) + 1))
            while i != -1:
                if s.startswith(buf[i:]):
                    best = max(best, len(buf) - i)
                    break
                i = buf.find(head, i + 1)
        return best
