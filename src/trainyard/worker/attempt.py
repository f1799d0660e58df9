"""One attempt from assignment to final report: prepare, spawn, supervise, upload, report."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import os
import shutil
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainyard.datacache import ENV as DATA_CACHE_ENV
from trainyard.model.states import AttemptOutcome
from trainyard.proto.trainyard.v1 import worker_pb2 as pb
from trainyard.worker.beneath import ANYONE, Reader, chown_tree, read_small
from trainyard.worker.cache_scan import team_cache_dir
from trainyard.worker.config import WorkerConfig
from trainyard.worker.executors.base import (
    Executor,
    ExitStatus,
    InfraFailure,
    LaunchSpec,
    RunHandle,
    StartFailed,
)
from trainyard.worker.files import (
    ArtifactFile,
    UnpackLimits,
    UnsafeArchive,
    artifact_name_problem,
    collect_artifacts,
    has_entries,
    pack_dir,
    unpack_tar,
)
from trainyard.worker.isolation import IsolationMode
from trainyard.worker.jobuser import job_user
from trainyard.worker.logship import LogSealer, LogShipper
from trainyard.worker.masking import SecretMasker
from trainyard.worker.rpc import ControlPlane, StaleLease
from trainyard.worker.slots import AttemptSlots, clear_owner
from trainyard.worker.spool import LogSpool
from trainyard.worker.transfer import AttemptObject, TransferError, Transfers, UploadDeadline
from trainyard.worker.workingdir import WorkingDir, choose

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.tar.gz"

_DRAIN_TIMEOUT_S = 2.0
"""How long a finished attempt's directory waits for the live log push to read its last bytes."""


@dataclass(frozen=True)
class AttemptContext:
    """What every attempt shares with the agent."""

    cfg: WorkerConfig
    rpc: ControlPlane
    transfers: Transfers
    shipper: LogShipper
    executor: Executor
    slots: AttemptSlots
    upload_deadline: UploadDeadline = field(default_factory=UploadDeadline)
    """Set when the agent stops: final uploads still going then are abandoned, so every attempt
    reports before the agent gives up on them."""
    under_way: set[tuple[str, int]] = field(default_factory=set)
    """The attempts of this agent between their start and their final report (see ``_report_started``)."""


@dataclass
class _FinalUploads:
    """What an attempt's final uploads got up so far."""

    artifacts: list[pb.Artifact] = field(default_factory=list)
    checkpoint_key: str = ""
    problems: list[str] = field(default_factory=list)


STARTED_COALESCE_S = 0.01
"""How long the STARTED report waits to be merged into FINISHED when the process ends at once, while
other attempts are under way on the agent (a lone attempt reports it without waiting)."""


SLOW_START_S = 1.0
"""An attempt whose STARTED report is answered later than this after its lease arrived is logged,
phase by phase: a slow start is the agent's side of a dispatch that took long."""
SLOW_START_LOG_EVERY_S = 10.0
"""At most one such line this often: a burst of thousands of attempts starts slowly all together."""


class SlowStarts:
    """Logs slow starts (``SLOW_START_S``), one line per ``SLOW_START_LOG_EVERY_S`` at most, which
    counts those left out since the last; the others go to the debug log."""

    def __init__(self) -> None:
        self._logged_at = -math.inf
        self._left_out = 0

    def note(self, key: tuple[str, int], marks: list[tuple[str, float]]) -> bool:
        """Whether ``marks`` (phase, monotonic time; the first is the lease's arrival) made a line."""
        took = marks[-1][1] - marks[0][1]
        if took <= SLOW_START_S:
            return False
        phases = ", ".join(
            f"{name} {t - before:.2f}s" for (_, before), (name, t) in itertools.pairwise(marks)
        )
        line = "attempt %s/%d: started %.1fs after its lease arrived (%s)"
        at = marks[-1][1]
        if at - self._logged_at < SLOW_START_LOG_EVERY_S:
            self._left_out += 1
            log.debug(line, *key, took, phases)
            return False
        left_out, self._left_out, self._logged_at = self._left_out, 0, at
        log.warning(line + "; %d more slow starts since the last such line", *key, took, phases, left_out)
        return True


_slow_starts = SlowStarts()


class AttemptRunner:
    """Runs one assignment. Stop requests may come at any time, before the spawn included."""

    def __init__(self, ctx: AttemptContext, assignment: pb.Assignment, *, restarted: bool = False) -> None:
        self.ctx = ctx
        self.a = assignment
        self.key = (assignment.job_id, assignment.attempt)
        self.marks: list[tuple[str, float]] = [("lease", time.monotonic())]
        """When the attempt got from its lease to its STARTED answer, phase by phase (``slow_start``)."""
        self.dir = ctx.slots.acquire(assignment.job_id, assignment.attempt)
        self.restarted = restarted
        """The attempt ran under an earlier agent on this node (whose processes were killed at start-up)."""
        self.stop_outcome: AttemptOutcome | None = None
        self.stop_reason = ""
        self.forgotten = False
        """The lease is gone (STALE, KILL_STALE): no more reports, no uploads."""
        self.handle: RunHandle | None = None
        self.spool = LogSpool(
            self.dir / "log",
            ctx.cfg.max_log_bytes,
            on_data=self._on_log,
            masker=SecretMasker(assignment.env.get(k, "") for k in assignment.secret_env),
        )
        self.sealer: LogSealer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.upload_failed = False
        """An upload failed every try: the directory stays, so no log or artifact byte is lost."""
        cfg = ctx.cfg
        self.user = job_user(cfg.run_as) if cfg.isolation is not IsolationMode.OFF else None
        """(uid, gid) the job runs as; None: the agent's own user (not root, or isolation off)."""
        self.reader = Reader(*self.user) if self.user is not None else ANYONE
        """Whose permissions decide what of the job's files the agent may upload."""
        self.workdir: WorkingDir | None = None

    # -- commands -----------------------------------------------------------------------------------

    def running_attempt(self) -> pb.RunningAttempt:
        return pb.RunningAttempt(
            job_id=self.a.job_id,
            attempt=self.a.attempt,
            lease_token=self.a.lease_token,
            last_checkpoint_at=self._last_checkpoint_at(),
        )

    def _last_checkpoint_at(self) -> float:
        """Newest change in the checkpoint directory: ``save_checkpoint`` renames each one into
        place, so the directory's own entries move when a checkpoint lands. One scandir per beat."""
        from trainyard.job import COMPLETE_MARKER  # the jobs' helpers: not an idle agent's business

        newest = 0.0
        try:
            with os.scandir(self.dir / "checkpoints") as entries:
                for e in entries:
                    if e.name == COMPLETE_MARKER:
                        continue
                    try:
                        newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        continue
        except OSError:
            return 0.0
        return newest

    def request_stop(self, outcome: AttemptOutcome, reason: str) -> None:
        """Stop the job with the grace period; the first stop request decides the outcome."""
        if self.forgotten or self.stop_outcome is not None:
            return
        self.stop_outcome = outcome
        self.stop_reason = reason
        if self.handle is not None:
            self._spawn(self._stop_handle(self.handle))

    def kill_stale(self) -> None:
        """The attempt is not ours any more: kill it at once and say nothing more about it."""
        if not self.forgotten:
            log.warning("attempt %s/%d: the lease is no longer ours (stale); killing it", *self.key)
        self.forgotten = True
        if self.handle is not None:
            self.handle.kill()
        if self.sealer is not None:
            self.sealer.abandon()
        self.ctx.shipper.drop(self.key)

    def kill_now(self) -> None:
        if self.handle is not None:
            self.handle.kill()

    def _grace_s(self) -> float:
        if self.stop_outcome is AttemptOutcome.PREEMPTED:
            return self.ctx.cfg.preempt_grace_s
        if self.ctx.cfg.cancel_grace_s is not None:
            return self.ctx.cfg.cancel_grace_s
        session = self.ctx.rpc.session
        return session.cancel_grace_s if session else 10.0

    async def _stop_handle(self, handle: RunHandle) -> None:
        await handle.stop(self._grace_s())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sealed(self) -> int:
        # A follower's live tail starts here: what lies before is in chunks the control plane indexed.
        return self.sealer.sealed if self.sealer is not None else 0

    def _on_log(self) -> None:
        self.ctx.shipper.notify()
        if self.sealer is not None:
            self.sealer.notify()

    # -- the attempt ---------------------------------------------------------------------------------

    async def run(self) -> None:
        self.ctx.under_way.add(self.key)
        try:
            await self._run()
        except asyncio.CancelledError:
            self.kill_now()
            raise
        except InfraFailure as e:
            # The executor says the platform under the job failed it (a Pod evicted from its node).
            log.warning("attempt %s/%d: %s", *self.key, e)
            self.kill_now()
            if not self.forgotten:
                await self._finish_report(AttemptOutcome.INFRA, str(e), None)
        except Exception:
            # Whatever broke is the agent's fault, not the job's: say so, so that the server can retry it.
            log.exception("attempt %s/%d failed inside the agent", *self.key)
            self.kill_now()
            if not self.forgotten:
                await self._finish_report(AttemptOutcome.INFRA, "worker agent error", None)
        finally:
            self.ctx.under_way.discard(self.key)
            self.spool.close()
        if self.forgotten:
            # The live tail may still be pushing the last bytes from the spool file.
            await self.ctx.shipper.drained(self.key, _DRAIN_TIMEOUT_S)
            if self.upload_failed or self.ctx.cfg.keep_attempt_dirs:
                kept = await self._keep_dir()
                if self.upload_failed:
                    log.warning("attempt %s/%d: uploads failed; its files stay in %s", *self.key, kept)
            else:
                await self._remove_dir()
        self.ctx.shipper.drop(self.key)

    async def _run(self) -> None:
        a = self.a
        if self.restarted:
            await self._finish_report(
                AttemptOutcome.INFRA, "the worker agent restarted while the attempt was running", None
            )
            return
        self.ctx.shipper.add(a.job_id, a.attempt, a.lease_token, self.spool, sealed=self._sealed)
        if self.ctx.cfg.log_shipper != "external":
            # With an external shipper (Fluent Bit) the log reaches object storage from the node.
            self.sealer = LogSealer(
                self.ctx.rpc,
                self.ctx.transfers,
                self.spool,
                job_id=a.job_id,
                attempt=a.attempt,
                lease_token=a.lease_token,
                seal_bytes=self.ctx.cfg.seal_bytes,
                interval_s=self.ctx.cfg.seal_interval_s,
                interval_max_s=self.ctx.cfg.seal_interval_max_s,
                max_chunk_bytes=self.ctx.cfg.seal_max_bytes,
                on_stale=self.kill_stale,
            )
        started_at = time.monotonic()
        if self.stop_outcome is not None:
            # Stopped before it began (a draining agent hands the lease back): nothing to fetch.
            await self._finish_report(self.stop_outcome, self.stop_reason, None)
            return
        try:
            self.marks.append(("setup", time.monotonic()))
            spec = await self._prepare()
            self.marks.append(("prepare", time.monotonic()))
            if self.forgotten:
                return
            if self.stop_outcome is not None:
                await self._finish_report(self.stop_outcome, self.stop_reason, None)
                return
            handle = await self.ctx.executor.start(spec, self.spool)
        except StartFailed as e:
            await self._finish_report(AttemptOutcome.START_FAILED, str(e), None)
            return
        self.handle = handle
        self.marks.append(("spawn", time.monotonic()))
        if self.forgotten:
            handle.kill()
        elif self.stop_outcome is not None:
            self._spawn(self._stop_handle(handle))
        exited = asyncio.Event()
        started = asyncio.get_running_loop().create_task(self._report_started(exited))
        status = await self._supervise(handle, started_at)
        exited.set()
        self.ctx.shipper.finish(self.key)
        await started
        if self.forgotten:
            return
        if self.stop_outcome is AttemptOutcome.PREEMPTED and status.ok and self._marked_complete():
            # It said its work was done (trainyard.job.mark_complete): that is the job's success.
            # Any other exit, 0 included, of an attempt being preempted is a preemption: the job
            # resumes from its checkpoint instead of dropping the rest of its work as a success.
            outcome, reason = AttemptOutcome.SUCCEEDED, ""
        elif self.stop_outcome is not None:
            outcome, reason = self.stop_outcome, self.stop_reason
        elif status.ok:
            outcome, reason = AttemptOutcome.SUCCEEDED, ""
        else:
            outcome, reason = AttemptOutcome.FAILED, status.describe()
        await self._finish_report(outcome, reason, status, cwd=spec.cwd)

    def _marked_complete(self) -> bool:
        from trainyard.job import COMPLETE_MARKER

        return read_small(self.dir / "checkpoints", COMPLETE_MARKER, 64) is not None

    async def _supervise(self, handle: RunHandle, started_at: float) -> ExitStatus:
        limit = self.a.max_runtime_s
        if limit > 0:
            try:
                return await asyncio.wait_for(
                    handle.wait(), max(0.0, limit - (time.monotonic() - started_at))
                )
            except TimeoutError:
                self.request_stop(AttemptOutcome.TIMED_OUT, f"exceeded max runtime of {limit:g}s")
        return await handle.wait()

    async def _prepare(self) -> LaunchSpec:
        a, cfg = self.a, self.ctx.cfg
        ckpt, arts, work = self.dir / "checkpoints", self.dir / "artifacts", self.dir / "work"
        cache = team_cache_dir(cfg.data_cache, a.team)
        await asyncio.to_thread(self._own_dirs, (ckpt, arts, work, cache))
        if a.workdir_url:
            limits = UnpackLimits(cfg.workdir_unpacked_limit, cfg.workdir_file_limit)
            await self._fetch_bundle(a.workdir_url, self.dir / "workdir.tar.gz", work, "workdir", limits)
        resume_dir: Path | None = None
        if a.resume_from_url:
            resume_dir = self.dir / "resume"
            await self._fetch_bundle(a.resume_from_url, self.dir / "resume.tar.gz", resume_dir, "checkpoint")
        choice = await asyncio.to_thread(
            choose,
            a.cwd,
            work,
            allow=cfg.allow_cwd,
            protected=(cfg.work_dir, cfg.data_cache, *cfg.protected_dirs),
            has_bundle=bool(a.workdir_url),
        )
        if choice.note:
            self.spool.write(2, f"trainyard: {choice.note}\n".encode())
        self.workdir = choice.workdir
        env = dict(a.env)
        if self.user is not None:
            # The agent's home is root's: the job's user gets its own directory for dotfiles and caches.
            env.setdefault("HOME", str(work))
        env[DATA_CACHE_ENV] = str(cache)
        return LaunchSpec(
            job_id=a.job_id,
            attempt=a.attempt,
            command=tuple(a.command),
            env=env,
            cwd=choice.workdir.path,
            attempt_dir=self.dir,
            checkpoint_dir=ckpt,
            artifact_dir=arts,
            resume_dir=resume_dir,
            gpu_indices=tuple(a.gpu_indices),
            cpu=a.cpu,
            memory=a.memory,
            image=a.image,
            network=not a.no_network,
            data_cache=cache,
            user=self.user,
            lease_token=a.lease_token,
            max_runtime_s=a.max_runtime_s,
            secret_env=tuple(k for k in a.secret_env if k in env),
        )

    def _own_dirs(self, dirs: tuple[Path, ...]) -> None:
        """The job's directories exist and belong to its user (the agent made them as root)."""
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            if self.user is not None:
                os.chown(d, *self.user, follow_symlinks=False)
        if self.user is not None:
            os.chmod(dirs[-1], 0o700)  # the team's cache: its datasets are the team's alone

    async def _fetch_bundle(
        self, url: str, archive: Path, dest: Path, what: str, limits: UnpackLimits | None = None
    ) -> None:
        try:
            await self.ctx.transfers.get_file(url, archive)
        except TransferError as e:
            raise StartFailed(f"{what} download failed: {e}") from e
        try:
            await asyncio.to_thread(unpack_tar, archive, dest, limits)
            if self.user is not None:
                # Unpacked by root before the job exists: the job's user may then read and change it.
                await asyncio.to_thread(chown_tree, dest, *self.user)
        except UnsafeArchive as e:
            raise StartFailed(f"{what} unpack failed: {e}") from e
        finally:
            archive.unlink(missing_ok=True)

    async def _report_started(self, exited: asyncio.Event) -> None:
        # Under a burst of attempts, a process that is over within a few milliseconds is reported
        # once, as finished (the control plane records it as started too): one report instead of two
        # for the shortest jobs, where reports are what the control plane spends its time on. A lone
        # attempt saves nothing worth its wait: on an idle fleet the window was a third of the time
        # from submit to the recorded start (issue 14), so it reports at once.
        if len(self.ctx.under_way) > 1:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), STARTED_COALESCE_S)
        if exited.is_set():
            return
        self.marks.append(("coalesce", time.monotonic()))
        resp = await self.ctx.rpc.report(
            pb.ReportRequest(
                job_id=self.a.job_id,
                attempt=self.a.attempt,
                lease_token=self.a.lease_token,
                phase=pb.ReportRequest.STARTED,
                at=time.time(),
            )
        )
        self.marks.append(("report", time.monotonic()))
        _slow_starts.note(self.key, self.marks)
        if resp.result == pb.ReportResponse.STALE:
            log.warning("attempt %s/%d is stale: killing it", *self.key)
            self.kill_stale()

    async def _finish_report(
        self, outcome: AttemptOutcome, reason: str, status: ExitStatus | None, *, cwd: Path | None = None
    ) -> None:
        finished_at = time.time()
        stopping = self.stop_outcome is not None
        up = _FinalUploads()
        try:
            done, _ = await self.ctx.upload_deadline.within(self._final_uploads(outcome, cwd, up))
        except StaleLease:
            self.kill_stale()
            return
        if self.forgotten:
            return
        artifacts, checkpoint_key, problems = up.artifacts, up.checkpoint_key, up.problems
        if not done:
            # The agent is stopping and its time is nearly up: report now with what went up. The
            # rest stays in the attempt's directory (``upload_failed``), and nothing more is sealed.
            log.warning("attempt %s/%d: final uploads abandoned as the worker stops", *self.key)
            problems.append("uploads abandoned: the worker stopped before they finished")
            if self.sealer is not None:
                self.sealer.abandon()
        if problems:
            self.upload_failed = True
            note = "; ".join(problems)
            if stopping or outcome in (AttemptOutcome.START_FAILED, AttemptOutcome.INFRA):
                reason = f"{reason}; {note}" if reason else note
            else:
                # The job's results did not reach storage: the run cannot count as the job's own outcome.
                outcome, reason = AttemptOutcome.INFRA, note
        req = pb.ReportRequest(
            job_id=self.a.job_id,
            attempt=self.a.attempt,
            lease_token=self.a.lease_token,
            phase=pb.ReportRequest.FINISHED,
            outcome=outcome.value,
            reason=reason,
            stderr_tail=self.spool.stderr_tail,
            artifacts=artifacts,
            log_bytes=self.spool.size,
            checkpoint_key=checkpoint_key,
            at=finished_at,
        )
        if status is not None and (status.returncode is not None or status.signal is not None):
            req.exit_code = status.exit_code
            req.has_exit_code = True
        resp = await self.ctx.rpc.report_final(req)
        if resp.result == pb.ReportResponse.STALE:
            log.info("final report for %s/%d answered stale", *self.key)
        self.forgotten = True

    async def _final_uploads(self, outcome: AttemptOutcome, cwd: Path | None, up: _FinalUploads) -> None:
        """Seal the log and upload the artifacts and (unless it succeeded) the checkpoint, into
        ``up`` as each lands, so an upload abandoned part way keeps what went up before it."""

        async def checkpoint() -> None:
            if outcome is not AttemptOutcome.SUCCEEDED:
                try:
                    up.checkpoint_key = await self._upload_checkpoint()
                except TransferError as e:
                    up.problems.append(f"checkpoint upload failed: {e}")

        preempted = self.stop_outcome is AttemptOutcome.PREEMPTED
        if preempted:
            # A preempted attempt's checkpoint is what its next attempt resumes from: it goes first,
            # in case the agent's stop leaves no time for the rest.
            await checkpoint()
        # Found before the log is sealed: a file skipped for its name is noted in the log.
        found = await self._collect_artifacts() if cwd is not None or self.handle is not None else None
        if self.sealer is not None:
            try:
                await self.sealer.finish()
            except TransferError as e:
                up.problems.append(f"log upload failed: {e}")
        if found is not None:
            try:
                up.artifacts = await self._upload_artifacts(found)
            except TransferError as e:
                up.problems.append(f"artifact upload failed: {e}")
        if not preempted:
            await checkpoint()

    async def _collect_artifacts(self) -> list[ArtifactFile]:
        arts = self.dir / "artifacts"
        if not self.a.artifact_paths and not has_entries(arts):
            return []
        # Relative to the working directory's trusted root, never to a path the job could re-point.
        workdir = self.workdir or WorkingDir(self.dir / "work")
        files: list[ArtifactFile] = await asyncio.to_thread(
            functools.partial(
                collect_artifacts,
                arts,
                workdir.root,
                list(self.a.artifact_paths),
                self.reader,
                work_rel=workdir.rel,
            )
        )
        storable = []
        for f in files:
            problem = artifact_name_problem(f.name)
            if problem is None:
                storable.append(f)
            else:
                note = f"trainyard: artifact {f.name!r} not uploaded: {problem}\n"
                log.warning("attempt %s/%d: %s", *self.key, note.strip())
                self.spool.write(2, note.encode("utf-8", "backslashreplace"))
        return storable

    async def _upload_artifacts(self, files: list[ArtifactFile]) -> list[pb.Artifact]:
        if not files:
            return []
        urls = await self.ctx.rpc.get_urls(
            self.a.job_id, self.a.attempt, self.a.lease_token, pb.UrlRequest.ARTIFACT, [f.name for f in files]
        )
        out: list[pb.Artifact] = []
        for f in files:
            signed = urls.get(f.name)
            if signed is None:
                raise TransferError(f"no upload URL for artifact {f.name}")
            try:
                with f.opened(self.reader) as path:
                    await self.ctx.transfers.put_file(
                        signed.url, path, target=self._object(pb.UrlRequest.ARTIFACT, f.name), name=f.name
                    )
            except OSError as e:
                raise TransferError(f"artifact {f.name} is no longer readable: {e}") from e
            out.append(pb.Artifact(path=f.name, size=f.size, sha256=f.sha256, object_key=signed.object_key))
        return out

    def _object(self, purpose: pb.UrlRequest.Purpose.ValueType, name: str) -> AttemptObject:
        return AttemptObject(self.ctx.rpc, self.a.job_id, self.a.attempt, self.a.lease_token, purpose, name)

    async def _upload_checkpoint(self) -> str:
        ckpt = self.dir / "checkpoints"
        if not has_entries(ckpt):
            return ""
        archive = self.dir / CHECKPOINT_NAME
        try:
            await asyncio.to_thread(pack_dir, ckpt, archive)
        except OSError as e:
            raise TransferError(f"cannot pack checkpoint: {e}") from e
        try:
            urls = await self.ctx.rpc.get_urls(
                self.a.job_id, self.a.attempt, self.a.lease_token, pb.UrlRequest.CHECKPOINT, [CHECKPOINT_NAME]
            )
            signed = urls.get(CHECKPOINT_NAME)
            if signed is None:
                raise TransferError("no upload URL for the checkpoint")
            await self.ctx.transfers.put_file(
                signed.url,
                archive,
                "application/gzip",
                target=self._object(pb.UrlRequest.CHECKPOINT, CHECKPOINT_NAME),
            )
            return signed.object_key
        finally:
            archive.unlink(missing_ok=True)

    async def _remove_dir(self) -> None:
        self.spool.close()
        if not self.ctx.slots.release(self.dir, log_written=self.spool.size > 0):
            await asyncio.to_thread(shutil.rmtree, self.dir, True)

    async def _keep_dir(self) -> Path:
        """Move the attempt's directory out of the pool, named after the attempt (kept for people)."""
        self.spool.close()
        kept = self.ctx.cfg.work_dir / "kept" / f"{self.a.job_id}-{self.a.attempt}"
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            clear_owner(self.dir)  # no longer a running attempt's slot
            os.rename(self.dir, kept)
        except OSError:
            log.warning("cannot keep %s as %s", self.dir, kept, exc_info=True)
            return self.dir
        return kept
