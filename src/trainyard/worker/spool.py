"""The per-attempt log spool: stdout and stderr interleaved, byte-exact, in arrival order."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from trainyard.worker.masking import SecretMasker

STDOUT = 1
STDERR = 2
STDERR_TAIL_BYTES = 4096


class LogSpool:
    """Appends a job's output to one file, capped at ``max_bytes`` plus a marker line.

    Bytes are written as they arrive (no line handling), so partial lines and invalid UTF-8 survive
    unchanged. Past the cap the output is still accepted and counted, then dropped: the job's pipes
    must keep draining or the job would block on a full pipe. The file is created on the first
    byte, so a job without output costs no file.
    """

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        on_data: Callable[[], None] | None = None,
        masker: SecretMasker | None = None,
    ) -> None:
        self.path = path
        self.masker = masker if masker else None
        self.max_bytes = max_bytes
        self.on_data = on_data
        self.size = 0
        """Bytes in the spool file, the marker included: the combined log's length."""
        self.received = 0
        """Bytes the job wrote, dropped ones included."""
        self.truncated = False
        self._stderr_tail = bytearray()
        self._fd: int | None = None
        self._closed = False

    @property
    def stderr_tail(self) -> bytes:
        return bytes(self._stderr_tail)

    def write(self, stream: int, data: bytes) -> None:
        if not data:
            return
        self.received += len(data)
        if self.masker is not None:
            data = self.masker.feed(stream, data)
            if not data:
                return
        self._store(stream, data)

    def _store(self, stream: int, data: bytes) -> None:
        if stream == STDERR:
            # The tail is kept apart from the cap: the last words of stderr matter most when the log was cut.
            self._stderr_tail += data
            if len(self._stderr_tail) > STDERR_TAIL_BYTES:
                del self._stderr_tail[: len(self._stderr_tail) - STDERR_TAIL_BYTES]
        if self.truncated or self._closed:
            return
        room = self.max_bytes - self.size
        if len(data) > room:
            data = data[:room] + f"\n[trainyard: log truncated at {self.max_bytes} bytes]\n".encode()
            self.truncated = True
        self._append(data)
        if self.on_data is not None:
            self.on_data()

    def _append(self, data: bytes) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(data)

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the combined log, as stored in the spool file."""
        end = min(end, self.size)
        if start >= end:
            return b""
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def close(self) -> None:
        if self.masker is not None and not self._closed:
            for stream in self.masker.streams_held():
                self._store(stream, self.masker.flush(stream))
        self._closed = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
