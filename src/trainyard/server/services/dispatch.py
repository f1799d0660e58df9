"""The dispatcher: everything the control plane sends down workers' lease streams. The only
service that knows protobuf (the gRPC service in ``worker_service`` is the transport).

A worker's stream may be open on another replica: what cannot be sent here comes back as a
``WorkerNote`` for the notifier, and the replica holding the stream delivers it (``deliver_note``).
Notes are hints: every command is also carried by the worker's next heartbeat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from trainyard.model.records import Job
from trainyard.model.states import LIVE, JobStatus
from trainyard.objects.base import ObjectStore
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.server.hub import Kick, WorkerChannels
from trainyard.server.notify import Notifier, WorkerNote
from trainyard.server.services.blocking import off_loop
from trainyard.server.services.logs import LOG_TAIL_TTL_S
from trainyard.server.services.tenancy import TenancyService
from trainyard.store import Lease, WorkerCommand

if TYPE_CHECKING:
    from trainyard.store.ports import DispatchStore

DEPENDENCY_URL_TTL_S = 3600.0
"""How long the download URLs of a dependent job's inputs last (at least ``url_ttl``): the job reads
them when it starts (``trainyard.job.dependency_artifacts``), after its image and bundle arrived."""
DEPENDENCY_ENV_BYTES = 64 * 1024
"""A dependency list longer than this goes to a manifest object (``..._URL``) rather than the env."""
MAX_DEPENDENCY_ARTIFACTS = 1000
"""The most artifacts a dependent job is handed (an array of many tasks as a dependency)."""

_COMMAND_KINDS = {
    "cancel": pb.Command.CANCEL,
    "kill_stale": pb.Command.KILL_STALE,
    "timeout": pb.Command.TIMEOUT,
    "preempt": pb.Command.PREEMPT,
    "drain": pb.Command.DRAIN,
}


def command_message(cmd: WorkerCommand) -> pb.Command:
    """A command (cancel, kill_stale, timeout, preempt, drain) as the protocol's message."""
    return pb.Command(
        kind=_COMMAND_KINDS[cmd.kind],
        job_id=cmd.job_id,
        attempt=cmd.attempt,
        lease_token=cmd.lease_token,
        reason=cmd.reason,
    )


def _cancel_message(job: Job, reason: str) -> pb.LeaseMessage:
    return pb.LeaseMessage(
        command=pb.Command(
            kind=pb.Command.CANCEL,
            job_id=job.id,
            attempt=job.attempt,
            lease_token=job.lease_token or "",
            reason=reason,
        )
    )


def _tail_message(job_id: str, attempt: int, *, stop: bool) -> pb.LeaseMessage:
    return pb.LeaseMessage(
        log_tail=pb.LogTail(job_id=job_id, attempt=attempt, offset=0, ttl_s=LOG_TAIL_TTL_S, stop=stop)
    )


class Dispatcher:
    """Assignments and commands to connected workers; notes for the others."""

    def __init__(
        self,
        store: DispatchStore,
        channels: WorkerChannels,
        notifier: Notifier,
        objects: ObjectStore,
        tenancy: TenancyService,
        *,
        url_ttl: float,
        kick_relay: Kick,
    ) -> None:
        self.store = store
        self.channels = channels
        self.notifier = notifier
        self.objects = objects
        self.tenancy = tenancy
        self.url_ttl = url_ttl
        self.kick_relay = kick_relay
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- a worker's stream -----------------------------------------------------------------------
    def connect(self, worker_id: str) -> asyncio.Queue[pb.LeaseMessage]:
        """Open a lease stream for the worker: the queue its messages arrive on."""
        return self.channels.connect(worker_id)

    def disconnect(self, worker_id: str, queue: asyncio.Queue[pb.LeaseMessage]) -> None:
        """The worker's stream ended."""
        self.channels.disconnect(worker_id, queue)

    async def held_assignments(self, worker_id: str) -> list[pb.LeaseMessage]:
        """Everything the worker holds, to send again when its stream opens (it dedupes)."""
        return [
            pb.LeaseMessage(assignment=self.build_assignment(lease))
            for lease in await off_loop(self.store.leased_to, worker_id)
        ]

    # ---- leases ----------------------------------------------------------------------------------
    def dispatch(self, leases: list[Lease]) -> list[WorkerNote]:
        """Send each lease down its worker's stream; the leases of workers connected to another
        replica come back as notes for the notifier."""
        remote: dict[str, list[tuple[str, int]]] = {}
        for lease in leases:
            msg = pb.LeaseMessage(assignment=self.build_assignment(lease))
            if not self.channels.send(lease.worker_id, msg):
                remote.setdefault(lease.worker_id, []).append((lease.job_id, lease.attempt))
        if leases:
            self.kick_relay.set()
        return [WorkerNote(w, "lease", tuple(jobs)) for w, jobs in remote.items()]

    def presign_get(self, key: str) -> str:
        """A short-lived download URL of an object."""
        return self.objects.presign(key, "GET", self.url_ttl)

    def build_assignment(self, lease: Lease) -> pb.Assignment:
        """The assignment message of a lease (blocking when the job names secrets: they are read
        and decrypted here)."""
        # The stored spec is the normalized one this control plane wrote: read it as plain data
        # (validating it again would cost more than the rest of the assignment).
        spec = lease.spec
        env = dict(spec.get("env") or {})
        env.update(
            {
                "TRAINYARD_JOB_ID": lease.job_id,
                "TRAINYARD_ATTEMPT": str(lease.attempt),
                "TRAINYARD_JOB_NAME": lease.name or "",
                "TRAINYARD_TEAM": lease.team,
                "TRAINYARD_USER": lease.user,
                "TRAINYARD_RANK": str(lease.rank),
                "TRAINYARD_WORLD_SIZE": str(lease.world_size),
            }
        )
        if lease.array_id is not None:
            # The Slurm wrapper (model/slurm) makes SLURM_ARRAY_TASK_ID/SLURM_ARRAY_JOB_ID of them.
            env["TRAINYARD_ARRAY_JOB_ID"] = lease.array_id
            env["TRAINYARD_ARRAY_INDEX"] = str(lease.array_index)
        if spec.get("depends_on"):
            env.update(self.dependency_env(lease, spec["depends_on"]))
        if lease.gang_id:
            # torch.distributed's env:// rendezvous reads these (and RANK/WORLD_SIZE, set alike).
            env.update(
                {
                    "TRAINYARD_GANG_ID": lease.gang_id,
                    "MASTER_ADDR": lease.master_addr,
                    "MASTER_PORT": str(lease.master_port),
                    "RANK": str(lease.rank),
                    "WORLD_SIZE": str(lease.world_size),
                }
            )
        names = list(spec.get("secrets") or ())
        if names:
            # Rare, so read here on demand (a few ms, on the caller's thread) rather than in every lease.
            env.update(self.tenancy.secret_values(lease.team, names))
        return pb.Assignment(
            secret_env=names,
            job_id=lease.job_id,
            attempt=lease.attempt,
            lease_token=lease.lease_token,
            command=list(spec["command"]),
            env=env,
            gpu_indices=lease.gpu_indices,
            cpu=lease.cpu,
            memory=lease.memory,
            max_runtime_s=lease.max_runtime,
            workdir_url=self.presign_get(spec["workdir"]) if spec.get("workdir") else "",
            cwd=spec.get("cwd") or "",
            artifact_paths=list(spec.get("artifacts") or ()),
            resume_from_url=self.presign_get(lease.resume_key) if lease.resume_key else "",
            image=spec.get("image") or "",
            name=lease.name or "",
            no_network=spec.get("network") is False,
            team=lease.team,
        )

    def dependency_env(self, lease: Lease, deps: list[dict[str, Any]]) -> dict[str, str]:
        """What a dependent job needs to fetch its dependencies' artifacts (``trainyard.job.
        dependency_artifacts``): a JSON list of ``{job, name, url, sha256, size}`` with presigned
        URLs, in ``TRAINYARD_DEPENDENCY_ARTIFACTS``, or, when long, in a manifest object whose URL is
        ``TRAINYARD_DEPENDENCY_ARTIFACTS_URL``. Blocking (a store read), as secrets are: only
        dependent jobs pay it."""
        ttl = max(self.url_ttl, DEPENDENCY_URL_TTL_S)
        items = [
            {
                "job": job,
                "name": a.path,
                "url": self.objects.presign(a.object_key, "GET", ttl),
                "sha256": a.sha256,
                "size": a.size,
            }
            for job, a in self.store.dependency_artifacts(deps, MAX_DEPENDENCY_ARTIFACTS)
        ]
        text = json.dumps(items, separators=(",", ":"))
        if len(text) <= DEPENDENCY_ENV_BYTES:
            return {"TRAINYARD_DEPENDENCY_ARTIFACTS": text}
        key = f"dependencies/{lease.job_id}/{lease.attempt}.json"
        self.objects.put(key, text.encode())
        return {"TRAINYARD_DEPENDENCY_ARTIFACTS_URL": self.objects.presign(key, "GET", ttl)}

    # ---- commands --------------------------------------------------------------------------------
    def preempt(self, commands: Sequence[WorkerCommand]) -> list[WorkerNote]:
        """Send the scheduler's preempt commands; notes for workers on other replicas."""
        notes = []
        for cmd in commands:
            assert cmd.worker_id is not None
            if not self.channels.send(cmd.worker_id, pb.LeaseMessage(command=command_message(cmd))):
                notes.append(WorkerNote(cmd.worker_id, "preempt", ((cmd.job_id, cmd.attempt),)))
        return notes

    async def cancel(self, job: Job, reason: str) -> None:
        """Tell the worker of a CANCELLING job to stop it, here or through the other replicas."""
        worker = job.worker_id if job.status is JobStatus.CANCELLING and job.lease_token else None
        if worker and not self.channels.send(worker, _cancel_message(job, reason)):
            # Its lease stream is on another replica (or reconnecting): tell the others.
            note = WorkerNote(worker, "cancel", ((job.id, job.attempt),))
            await off_loop(self.notifier.send, [note])

    async def push_gang_stops(self, gang_id: str) -> None:
        """A gang rank ended: tell the workers of the ranks that must now stop, at once where their
        lease stream is here (elsewhere their next heartbeat carries the command)."""
        for cmd in await off_loop(self.store.gang_stops, gang_id):
            if cmd.worker_id is None:
                continue
            kind = pb.Command.PREEMPT if cmd.kind == "preempt" else pb.Command.CANCEL
            self.channels.send(
                cmd.worker_id,
                pb.LeaseMessage(
                    command=pb.Command(
                        kind=kind,
                        job_id=cmd.job_id,
                        attempt=cmd.attempt,
                        lease_token=cmd.lease_token,
                        reason=cmd.reason,
                    )
                ),
            )

    async def tail(self, worker_id: str, job_id: str, attempt: int, *, stop: bool = False) -> None:
        """Ask the worker running the attempt to push its live log bytes (for ``LOG_TAIL_TTL_S``
        more seconds), or with ``stop`` to push no more: at once where its lease stream is here,
        through the replica holding it otherwise. The follower asks again well within the ttl, so a
        lost note costs a few seconds of live tail, never a byte of the log."""
        if not self.channels.send(worker_id, _tail_message(job_id, attempt, stop=stop)):
            note = WorkerNote(worker_id, "untail" if stop else "tail", ((job_id, attempt),))
            await off_loop(self.notifier.send, [note])

    def drain(self, worker_id: str) -> None:
        """Tell a worker (if its stream is here) to take no new work."""
        self.channels.send(worker_id, pb.LeaseMessage(command=pb.Command(kind=pb.Command.DRAIN)))

    # ---- notes from other replicas ---------------------------------------------------------------
    def deliver_note(self, note: WorkerNote) -> None:
        """Another replica has something for a worker: deliver it if its lease stream is here."""
        if self.channels.connected(note.worker_id):
            task = asyncio.get_running_loop().create_task(self._deliver(note))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, note: WorkerNote) -> None:
        wanted = set(note.jobs)
        if note.kind == "lease":
            for lease in await off_loop(self.store.leased_to, note.worker_id):
                if (lease.job_id, lease.attempt) in wanted:
                    msg = pb.LeaseMessage(assignment=self.build_assignment(lease))
                    self.channels.send(note.worker_id, msg)
        elif note.kind == "preempt":
            for job_id, attempt in wanted:
                job = await off_loop(self.store.get_job, job_id)
                if job is not None and job.attempt == attempt and job.status in LIVE and job.lease_token:
                    msg = pb.LeaseMessage(
                        command=pb.Command(
                            kind=pb.Command.PREEMPT,
                            job_id=job.id,
                            attempt=job.attempt,
                            lease_token=job.lease_token,
                            reason="preempted by the scheduler",
                        )
                    )
                    self.channels.send(note.worker_id, msg)
        elif note.kind in ("tail", "untail"):
            for job_id, attempt in wanted:
                self.channels.send(note.worker_id, _tail_message(job_id, attempt, stop=note.kind == "untail"))
        elif note.kind == "cancel":
            for job_id, attempt in wanted:
                job = await off_loop(self.store.get_job, job_id)
                if job is not None and job.attempt == attempt and job.status is JobStatus.CANCELLING:
                    self.channels.send(note.worker_id, _cancel_message(job, "cancel requested"))
