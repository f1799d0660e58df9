"""Secret values never reach a job's log as printed: each stream's output is masked before it is spooled.

What is masked, as ``***``:

- each value of ``MIN_MASKED`` bytes or more, exactly as given;
- for values of ``MIN_ENCODED`` bytes or more, also the forms a job prints by accident or out of
  habit: the value reversed, hex-encoded (lower and upper case) and base64-encoded (standard and
  URL-safe alphabets, padded or not, at any position in a longer encoded text).

Base64 turns 3 bytes into 4 characters, so a value's encoding depends on where it starts in the
encoded text (its offset modulo 3) and on its neighbours at both ends. For each of the three
offsets the characters that come from the value's bits alone are masked; the one character at
either end that mixes the value's bits with a neighbour's may show (at most 4 bits of the value's
first and of its last byte).

What is not masked, and cannot be: a value split over lines or interleaved with other text, or
encoded, compressed, encrypted or transformed any other way (base32, URL-encoding, base64 broken
over lines, a value with one character changed). Masking keeps a job from leaking a secret by
accident; a job that means to leak a secret it was given always can (it may also send it over the
network), so it is no defence against hostile code.

A value may arrive split over two writes (``pri`` then ``vate``), so the end of each write that
could still be the start of a masked form is held back until the next write (or the stream's end)
shows whether it is one. Only such a suffix is held, so ordinary output is not delayed.

Cost: one C-level substring search per masked form and write (``bytes.__contains__``), seven to
ten forms per value. On 64 KiB writes this loop measured about 8x faster than one regex alternation
of the same forms (CPython's ``re`` has no multi-literal, Aho-Corasick search); a write that ends in
a byte no form's prefix ends with (a newline, mostly) skips the search for a partial form.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

MASK = b"***"
MIN_MASKED = 4
"""Shorter values are not masked: masking every "1" or "ab" would wreck the log and hide nothing."""
MIN_ENCODED = 8
"""Shorter values are masked only as given: their reversed or encoded forms are short enough to turn
up in ordinary output (a 4-byte value's base64 core is 4 characters)."""

_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _base64_cores(value: bytes) -> set[bytes]:
    """For each offset of ``value`` in the encoded bytes (modulo 3), the base64 characters that only
    its own bits decide, in the standard and the URL-safe alphabet. Padding never falls inside."""
    out: set[bytes] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + value)
        first = -(-8 * offset // 6)  # the first character with no bit from the bytes before the value
        end = 8 * (offset + len(value)) // 6  # characters with all six bits from the value's bytes
        core = encoded[first:end]
        out.add(core)
        out.add(core.translate(_URLSAFE))
    return out


def masked_forms(value: bytes) -> set[bytes]:
    """The byte strings masked for one secret value (empty for a value too short to mask)."""
    if len(value) < MIN_MASKED:
        return set()
    forms = {value}
    if len(value) >= MIN_ENCODED:
        forms.add(value[::-1])
        forms.add(value.hex().encode())
        forms.add(value.hex().upper().encode())
        forms |= _base64_cores(value)
    return forms


class SecretMasker:
    def __init__(self, values: Iterable[str]) -> None:
        found: set[bytes] = set()
        for v in values:
            found |= masked_forms(v.encode())
        # Longest first: a form containing another is masked whole.
        self._secrets = sorted(found, key=lambda s: (-len(s), s))
        self._longest = max((len(s) for s in self._secrets), default=0)
        # The bytes a proper prefix of some form can end with: a write ending in any other byte (a
        # newline, mostly) holds nothing back, and costs no search for one.
        self._prefix_ends = frozenset(b for s in self._secrets for b in s[:-1])
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
        """Length of the longest end of ``buf`` that a masked form starts with (and is shorter than)."""
        if not buf or buf[-1] not in self._prefix_ends:
            return 0
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
