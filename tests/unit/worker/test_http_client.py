"""The agent's HTTP client: plain http:// goes through a transport that loads no CA bundle; https://
gets httpx's verified default transport, built on its first request; a proxy in the environment
gets httpx's own client, as before."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from trainyard.worker import transfer


def _serve(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text=str(request.url))


def test_https_transport_is_built_on_first_use(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    made: list[str] = []

    def fake_tls(**kwargs: object) -> httpx.AsyncBaseTransport:
        made.append("tls")
        return httpx.MockTransport(_serve)

    async def main() -> None:
        client = transfer.http_client(5.0, httpx.Limits(max_connections=4))
        async with client:
            assert made == []  # nothing loaded for an idle agent
            monkeypatch.setattr(transfer.httpx, "AsyncHTTPTransport", fake_tls)
            r = await client.get("https://bucket.example/key?sig=1")
            assert r.text == "https://bucket.example/key?sig=1"
            await client.get("https://bucket.example/other")
        assert made == ["tls"]  # built once, on the first https:// request

    asyncio.run(main())


def test_a_proxy_in_the_environment_keeps_httpx_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    client = transfer.http_client(5.0, httpx.Limits(max_connections=4))
    assert not any(isinstance(t, transfer._OnFirstRequest) for t in client._mounts.values())
    asyncio.run(client.aclose())
