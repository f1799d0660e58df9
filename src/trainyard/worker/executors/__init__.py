"""Executors run one attempt's command somewhere: a local process group, a container, a Pod."""

from trainyard.worker.executors.base import Executor, ExitStatus, LaunchSpec, LogSink, RunHandle, StartFailed

__all__ = ["Executor", "ExitStatus", "LaunchSpec", "LogSink", "RunHandle", "StartFailed"]
