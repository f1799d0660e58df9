"""What the API says about a Pod: whether it started, why it could not, and how it ended."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainyard.worker.executors.base import ExitStatus
from trainyard.worker.executors.kubernetes.pod import CONTAINER

# A container that could not start: its image, or its command, or its configuration.
_FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "PreCreateHookError",
    }
)
_START_ERRORS = frozenset({"StartError", "ContainerCannotRun"})
"""A terminated state with one of these reasons: the command never ran (containerd, Docker)."""
_NODE_ENDED = frozenset({"Shutdown", "Terminated", "NodeShutdown", "NodeLost", "UnexpectedAdmissionError"})
"""Pod reasons the kubelet gives a Pod it ended for the node's sake (graceful node shutdown, ...)."""


# ---- what the API says about a Pod ------------------------------------------------------------------


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str = ""
    message: str = ""
    signal: int = 0


@dataclass(frozen=True)
class PodView:
    """The few facts of a Pod object the executor acts on."""

    phase: str = ""
    reason: str = ""
    message: str = ""
    waiting: tuple[str, str] | None = None
    running: bool = False
    terminated: Terminated | None = None
    disruption: tuple[str, str] | None = None
    """The ``DisruptionTarget`` condition's reason and message: evicted, preempted, drained."""
    deleting: bool = False
    """Someone asked for the Pod's deletion (``metadata.deletionTimestamp``)."""

    @classmethod
    def of(cls, pod: Mapping[str, Any]) -> PodView:
        status = pod.get("status") or {}
        state: Mapping[str, Any] = {}
        for c in status.get("containerStatuses") or ():
            if c.get("name") == CONTAINER:
                state = c.get("state") or {}
        waiting = state.get("waiting")
        term = state.get("terminated")
        disruption = None
        for cond in status.get("conditions") or ():
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                disruption = (str(cond.get("reason") or ""), str(cond.get("message") or ""))
        return cls(
            phase=str(status.get("phase") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            waiting=(str(waiting.get("reason") or ""), str(waiting.get("message") or ""))
            if isinstance(waiting, Mapping)
            else None,
            running=isinstance(state.get("running"), Mapping),
            terminated=Terminated(
                exit_code=int(term.get("exitCode", -1)),
                reason=str(term.get("reason") or ""),
                message=str(term.get("message") or ""),
                signal=int(term.get("signal") or 0),
            )
            if isinstance(term, Mapping)
            else None,
            disruption=disruption,
            deleting=bool((pod.get("metadata") or {}).get("deletionTimestamp")),
        )

    @property
    def ended(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def container_started(self) -> bool:
        return self.running or (self.terminated is not None and self.terminated.reason not in _START_ERRORS)


def start_problem(view: PodView, image: str, command: str) -> str | None:
    """Why the Pod's container cannot start, or None while it may still."""
    if view.container_started:
        return None
    if view.waiting is not None and view.waiting[0] in _FATAL_WAITING:
        reason, message = view.waiting
        if "Image" in reason:
            return f"cannot pull image {image}: {reason}: {message}".rstrip(": ")
        return f"cannot start container of image {image}: {reason}: {message}".rstrip(": ")
    if view.terminated is not None:  # a start error: the command never ran
        text = view.terminated.message or view.terminated.reason
        lowered = text.lower()
        if "executable file not found" in lowered or "no such file or directory" in lowered:
            return f"command not found in image {image}: {command} ({text})"
        if "permission denied" in lowered:
            return f"command not executable in image {image}: {command} ({text})"
        return f"cannot start container of image {image}: {text}"
    if view.ended:
        # Refused by the kubelet before any container ran (OutOfcpu, OutOfnvidia.com/gpu, NodeAffinity).
        return f"the kubelet refused the Pod: {view.reason or view.phase}: {view.message}".rstrip(": ")
    return None


def infra_problem(view: PodView, deleted: bool) -> str | None:
    """Why a Pod that the agent did not stop ended for the platform's sake, not the job's; None: it
    ended by itself (its exit status says how)."""
    if view.reason == "Evicted":
        return f"the Pod was evicted from its node: {view.message}".rstrip(": ")
    if view.disruption is not None:
        reason, message = view.disruption
        return f"the Pod was disrupted ({reason}): {message}".rstrip(": ")
    if view.reason in _NODE_ENDED:
        return f"the Pod was ended by its node ({view.reason}): {view.message}".rstrip(": ")
    if deleted or view.deleting:
        # Gone, or its container stopped (SIGTERM) because someone else deleted it: not the job's end.
        return "the Pod was deleted by someone other than the agent while the job ran"
    if view.phase == "Failed" and view.terminated is None and view.reason != "DeadlineExceeded":
        return f"the Pod failed without an exit status: {view.reason}: {view.message}".rstrip(": ")
    return None


def exit_status(view: PodView, *, memory: int, killed: bool) -> ExitStatus:
    """The container's end as the process executor reports a process's."""
    term = view.terminated
    if term is None:
        # Gone before its container's end was recorded: killed (by us, or by the node).
        return ExitStatus(signal=signal.SIGKILL)
    code = term.exit_code
    if term.signal:
        status = ExitStatus(signal=term.signal)
    elif 128 < code <= 128 + 64:
        # 128 + N: killed by signal N, as the runtime reports it (the exit code stays the same).
        status = ExitStatus(signal=code - 128)
    else:
        status = ExitStatus(returncode=code)
    if killed and status.signal is None:
        status = ExitStatus(signal=signal.SIGKILL)
    if term.reason == "OOMKilled":
        status = ExitStatus(
            returncode=status.returncode, signal=status.signal, oom=True, memory_limit=max(0, memory)
        )
    return status
