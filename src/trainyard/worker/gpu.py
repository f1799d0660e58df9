"""Live GPU utilization for the heartbeat, read through NVML when it is there.

Without the ``pynvml`` module (the ``gpu`` extra) or an NVIDIA driver nothing is reported: an empty
sample, never a made-up zero, so dashboards show "no data" rather than an idle GPU.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any

log = logging.getLogger("trainyard.worker")


class GpuSampler:
    """Per-GPU utilization ratios (0..1) keyed by NVML device index.

    NVML is initialised once and kept open for the agent's lifetime: nvmlInit costs tens of
    milliseconds, a utilization query a few microseconds, and heartbeats come every few seconds.
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        self._failed = False
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return
        try:
            nvml.nvmlInit()
            self._handles = [
                nvml.nvmlDeviceGetHandleByIndex(i) for i in range(int(nvml.nvmlDeviceGetCount()))
            ]
        except Exception as e:  # NVMLError has many subclasses; any of them means "cannot read GPUs"
            log.info("NVML unavailable, not reporting GPU utilization: %s", e)
            return
        self._nvml = nvml

    @property
    def available(self) -> bool:
        return self._nvml is not None and bool(self._handles)

    def sample(self) -> dict[int, float]:
        if not self.available:
            return {}
        out: dict[int, float] = {}
        with self._lock:
            for index, handle in enumerate(self._handles):
                try:
                    rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                except Exception as e:
                    # One GPU that cannot be read (fallen off the bus, reset) is left out; the others count.
                    if not self._failed:
                        log.warning("NVML utilization query failed for GPU %d: %s", index, e)
                        self._failed = True
                    continue
                out[index] = float(rates.gpu) / 100.0
        return out

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                log.debug("nvmlShutdown failed", exc_info=True)
            self._nvml = None
