"""Fixtures for the CLI and SDK tests: an isolated environment and a fake API behind MockTransport."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from yard_fake import BASE, FakeAPI

from trainyard.cli.main import State
from trainyard.client.sdk import Client


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("TRAINYARD_URL", "TRAINYARD_TOKEN", "TRAINYARD_HOME", "TRAINYARD_WORKDIR_LIMIT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def client(api: FakeAPI) -> Iterator[Client]:
    c = Client(url=BASE, token="tok", transport=httpx.MockTransport(api), reconnect_delay=0, poll_interval=0)
    yield c
    c.close()


@pytest.fixture
def state(api: FakeAPI) -> State:
    return State(
        url=BASE, token="tok", transport=httpx.MockTransport(api), reconnect_delay=0, poll_interval=0
    )
