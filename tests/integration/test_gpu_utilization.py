"""GPU utilization: NVML on the worker → the heartbeat → `trainyard_gpu_utilization_ratio` on /metrics.

The agents run with a stand-in `pynvml` module on their PYTHONPATH (this machine has no NVIDIA
driver), so the whole path is real except the driver call itself.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from tests.harness import platform, wait_for
from trainyard.server.metrics import Metrics
from trainyard.worker.gpu import GpuSampler

FAKE_PYNVML = '''
"""Two GPUs at 37 % and 81 % utilization."""
from types import SimpleNamespace

_UTIL = [37, 81]

def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return len(_UTIL)
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return "NVIDIA A100-SXM4-80GB"
def nvmlDeviceGetUtilizationRates(h): return SimpleNamespace(gpu=_UTIL[h], memory=0)
'''


def _series(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for m in re.finditer(r"^trainyard_gpu_utilization_ratio\{([^}]*)\} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(labels["name"], labels["gpu"])] = float(m.group(2))
    return out


def test_collector_reports_latest_and_forgets_silent_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Metrics()
    m.gpu_utilization.record("w1", "node-a", {0: 0.5, 1: 1.0})
    m.gpu_utilization.record("w2", "node-b", {})  # no NVML there: no series, not a zero
    text = generate_latest(m.registry).decode()
    assert _series(text) == {("node-a", "0"): 0.5, ("node-a", "1"): 1.0}
    m.gpu_utilization.record("w1", "node-a", {0: 0.25})
    assert _series(generate_latest(m.registry).decode()) == {("node-a", "0"): 0.25}
    import trainyard.server.metrics as mod

    later = mod.time.monotonic() + m.gpu_utilization.ttl_s + 1
    monkeypatch.setattr(mod.time, "monotonic", lambda: later)
    assert _series(generate_latest(m.registry).decode()) == {}


def test_sampler_without_nvml_reports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails as on a node without the gpu extra
    s = GpuSampler()
    assert not s.available and s.sample() == {}


def test_sampler_skips_a_gpu_it_cannot_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def util(h: int) -> types.SimpleNamespace:
        if h == 1:
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(gpu=42)

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=util,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    s = GpuSampler()
    assert s.sample() == {0: 0.42}
    s.close()


def test_heartbeat_carries_utilization_to_metrics(tmp_path: Path) -> None:
    fake = tmp_path / "fakenvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_PYNVML)
    with platform(tmp_path, agents=1, agent_env={"PYTHONPATH": str(fake)}) as (cp, _):
        with cp.client() as c:
            worker = c.get("/v1/workers").json()["workers"][0]
            assert worker["capacity"]["gpu"] == 2  # NVML discovery saw the stand-in driver too

        def scraped() -> dict[tuple[str, str], float]:
            return _series(httpx.get(f"{cp.url}/metrics").text)

        series = wait_for(scraped, 10, 0.1, "GPU utilization on /metrics")
        assert series == {(worker["name"], "0"): 0.37, (worker["name"], "1"): 0.81}
