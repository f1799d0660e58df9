"""Which control-plane replica a request goes to: a list of base URLs, the first preferred, as etcd's
and Kafka's clients take a list of bootstrap endpoints.

Requests stay on the URL that last worked (sticky) and move to the next one only when it fails. A
request moves only when sending it again cannot do something twice: the connection was never made,
or the request is a read or carries an Idempotency-Key (the server answers a replayed key with the
job it already made, on any replica, since the key is stored in the shared database).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
GATEWAY_STATUS = frozenset({502, 503, 504})

# Failures after which the request may have reached the server: only a resendable one moves on.
_BROKEN = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
)


def parse_urls(raw: str) -> tuple[str, ...]:
    """The base URLs in ``raw`` (``http://a:8080,http://b:8080``), in order, without trailing ``/``
    or repeats; ValueError names the entry that is not an http(s) URL with a host."""
    urls: list[str] = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            raise ValueError(f"empty entry in the URL list {raw!r}")
        try:
            parts = urlsplit(entry)
            parts.port  # noqa: B018 - parsing it is the check: a port that is not a number raises
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{entry!r}: the scheme must be http or https")
        if not parts.hostname:
            raise ValueError(f"{entry!r}: no host")
        url = entry.rstrip("/")
        if url not in urls:
            urls.append(url)
    return tuple(urls)


def connect_failed(exc: httpx.TransportError) -> bool:
    """Nothing was sent: the connection was refused, the name did not resolve, or connecting timed out."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))


def resendable(method: str, headers: Mapping[str, str] | None) -> bool:
    """A request that may be sent again after it possibly reached a server: a read, or one with an
    Idempotency-Key. PUT and DELETE are not: a repeated secret delete answers 404, say."""
    if method.upper() in SAFE_METHODS:
        return True
    return any(name.lower() == "idempotency-key" for name in headers or {})


def fails_over(exc: httpx.TransportError, may_resend: bool) -> bool:
    """Whether a request that failed with ``exc`` may go to the next URL."""
    return connect_failed(exc) or (may_resend and isinstance(exc, _BROKEN))


class Endpoints:
    """The URLs and the one in use. Threads may share it: a failure moves on only from the URL that
    failed, so two requests failing on one replica skip one URL, not two."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("no control-plane URL")
        self.urls = tuple(urls)
        self._current = 0

    @classmethod
    def first_of(cls, *sources: tuple[str, str | None]) -> Endpoints:
        """The list from the first ``(where, raw)`` source that is set; ValueError says where a bad
        one came from."""
        for where, raw in sources:
            if raw:
                try:
                    return cls(parse_urls(raw))
                except ValueError as exc:
                    raise ValueError(f"bad control-plane URL in {where}: {exc}") from None
        raise ValueError("no control-plane URL")

    @property
    def current(self) -> str:
        return self.urls[self._current]

    def order(self) -> list[str]:
        """Every URL once, the one in use first, then the others in list order after it."""
        i = self._current
        return [*self.urls[i:], *self.urls[:i]]

    def succeeded(self, url: str) -> None:
        self._current = self.urls.index(url)

    def failed(self, url: str) -> None:
        i = self._current
        if self.urls[i] == url:
            self._current = (i + 1) % len(self.urls)
