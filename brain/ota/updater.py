"""The A/B updater: install state machine, hot swap, health window, commit or rollback.

One install walks through these phases, each persisted in ``state.json``
before its work starts (so that boot recovery knows what was interrupted)::

    idle -> downloading -> verifying -> unpacking -> staged -> switching -> trial
         -> committed | rolled_back            (failed: refused or broken on the way)

Verification happens in a staging directory beside the slots
(:meth:`Updater._stage`): the archive is unpacked there with every file's
size and hash checked, then :func:`brain.ota.admission.check_candidate` checks what the
manifest claims (hardware, actions, release counter, failed before) and who
vouches for it (a signed TUF target, or the device key for a local
derivative).  Only a bundle that passed all of it is renamed into the
inactive slot, so a rejected upload, a failed or truncated download or a full
disk leaves both the committed and the previous bundle as they were.

Boot recovery after a crash, SIGKILL or power cut is :mod:`brain.ota.recovery`.

The committed slot is never written by an install; only the inactive slot is.
Failed versions are never retried, and the release counter of committed
bundles never decreases (a bundle at or below it is refused).

Hot swap: the new model is loaded and smoke-tested off the control thread,
then handed to :meth:`brain.policy.PolicyRunner.swap`, which installs it
between two ticks.  A failed health window swaps the previous model back the
same way, so the robot keeps being driven by a working model.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brain.config import OtaConfig
from brain.ota.admission import UpdateRefused, bundle_source, check_candidate
from brain.ota.health import HealthMonitor, HealthReport, HealthThresholds
from brain.ota.lock import UpdaterBusy, UpdaterLock
from brain.ota.recovery import BootRecovery
from brain.ota.recovery import failed_record as _failed
from brain.ota.slots import MANIFEST_NAME, Slots
from brain.ota.smoke import SmokeTestFailed, load_bundle_policy, smoke_test
from brain.ota.state import OtaState, SlotName, SlotRecord, StateStore
from common.digest import sha256_file

if TYPE_CHECKING:
    from brain.policy import LoadedModel, PolicyRunner

# smoke_test and load_bundle_policy are looked up here at call time (tests patch them).
__all__ = ["STEPS", "SmokeTestFailed", "UpdateRefused", "Updater", "load_bundle_policy"]

_log = logging.getLogger(__name__)

# The steps an install goes through, as named to ``on_step`` (fault injection, tests).
STEPS = ("download", "verify", "unpack", "fsync", "switch", "trial", "commit")


# ----------------------------------------------------------------------------- the updater


@dataclass(frozen=True, slots=True)
class Candidate:
    """A bundle unpacked into the inactive slot, with its manifest."""

    record: SlotRecord
    manifest: Any  # EdgeManifest


class Updater:
    """The robot's updater.  :meth:`open` takes the lock and runs boot recovery.

    ``policy`` None (``continuon ota install`` without a daemon) stages only:
    the daemon tries the staged bundle at its next start.  ``on_step(name)`` is
    called as each step of :data:`STEPS` begins (fault-injection tests).

    Trust: ``repository(source)`` builds a :class:`brain.ota.trust.TrustedRepository`
    for ``source`` (None: the configured repository URL).  A cloud bundle is
    installed only as a signed TUF target (downloaded by :meth:`check`, or a
    side-loaded file whose length and sha256 match a signed target);
    ``verify_local(bundle_dir, state)`` vouches for a bundle fine-tuned on this
    robot (device key, derived from the committed cloud base).
    ``require_signature=False`` skips both (tests of the slot machinery only).
    """

    def __init__(
        self,
        root: Path,
        config: OtaConfig,
        *,
        hardware_id: str,
        action_names: tuple[str, ...] | None = None,
        policy: PolicyRunner | None = None,
        interventions: Callable[[], int] | None = None,
        threads: int = 1,
        loader: Callable[[Path, Any], LoadedModel] | None = None,
        repository: Callable[[str | Path | None], Any] | None = None,
        verify_local: Callable[[Path, OtaState], Any] | None = None,
        require_signature: bool = True,
        stop_motion: Callable[[str], object] | None = None,
        on_step: Callable[[str], None] | None = None,
        poll_s: float = 0.02,
    ):
        self.root = Path(root)
        self.config = config
        self.hardware_id = hardware_id
        self.action_names = action_names
        self.policy = policy
        self.store = StateStore(self.root)
        self.slots = Slots(self.root)
        self.lock = UpdaterLock(self.root)
        self.download_dir = self.root / "downloads"
        self._loader = loader or (
            lambda d, m: load_bundle_policy(d, m, threads=threads, action_names=action_names)
        )
        self._repository = repository
        self._verify_local = verify_local
        self.require_signature = require_signature
        self._stop_motion = stop_motion
        self._on_step = on_step
        self.monitor = HealthMonitor(policy.stats, interventions, poll_s=poll_s) if policy else None
        self.state = OtaState()
        self.boot_notes: list[str] = []
        self._repo_problem: str | None = None
        self.active_model: LoadedModel | None = None  # what the updater last put in the runner
        self.last_health: HealthReport | None = None
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._abort: asyncio.Event | None = None
        self._op_lock = asyncio.Lock()

    # ------------------------------------------------------------------ boot

    def open(self) -> Updater:
        """Take the updater lock (UpdaterBusy if held) and recover from any interruption."""
        self.lock.acquire()
        try:
            self.recover()
        except BaseException:
            self.lock.release()
            raise
        return self

    def close(self) -> None:
        self.lock.release()

    def recover(self) -> OtaState:
        """Bring the state and slots back to something consistent (brain.ota.recovery)."""
        self.root.mkdir(parents=True, exist_ok=True)
        rec = BootRecovery(self.store, self.slots)
        self.state = rec.run()
        self.boot_notes = rec.notes
        return self.state

    def active_bundle(self) -> Path | None:
        """The directory of the committed bundle to boot on (None: none installed)."""
        rec = self.state.committed
        return self.slots.path(rec.slot) if rec is not None else None

    def load_active(self) -> LoadedModel | None:
        """Load the committed bundle's policy (blocking: call it off the event loop)."""
        rec = self.state.committed
        if rec is None:
            return None
        manifest = self.slots.verify(rec.slot, rec.manifest_sha256)
        model = self._loader(self.slots.path(rec.slot), manifest)
        self.active_model = model
        return model

    # ------------------------------------------------------------------ public API

    def status(self) -> dict[str, Any]:
        st = self.state
        out: dict[str, Any] = {
            "available": True,
            "phase": st.phase,
            "busy": self._task is not None and not self._task.done(),
            "hardware_id": self.hardware_id,
            "committed": _rec(st.committed),
            "previous": _rec(st.previous),
            "candidate": _rec(st.candidate),
            "release_counter": st.release_counter,
            "failed_versions": [f.model_dump(mode="json") for f in st.failed],
            "last_error": st.last_error,
            "last_result": st.last_result,
            "repository_url": self.config.repository_url,
            "boot_notes": list(self.boot_notes),
        }
        if st.phase == "trial" and st.trial_started_at is not None and st.trial_window_s:
            out["trial_remaining_s"] = round(
                max(0.0, st.trial_started_at + st.trial_window_s - time.time()), 2
            )
        if self.last_health is not None:
            out["health"] = self.last_health.to_dict()
        return out

    async def install(self, archive: Path) -> dict[str, Any]:
        """Install a side-loaded bundle: an archive file, or a repository directory (USB stick).

        A directory is treated as a TUF repository (``check`` against it); a file
        must be a signed target of the configured repository or a device-signed
        local bundle.
        """
        archive = Path(archive)
        if archive.is_dir():
            if self._repository is None:
                raise UpdateRefused("no trust layer configured: cannot side-load a repository")
            return await self._run(self._check(archive))
        if not archive.is_file():
            raise UpdateRefused(f"{archive}: no such bundle archive")
        return await self._run(self._install_file(archive))

    async def check(self) -> dict[str, Any]:
        """Ask the repository for a newer bundle for this hardware and install it."""
        if self._repository is None or not self.config.repository_url:
            raise UpdateRefused("no update repository is configured (ota.repository_url)")
        return await self._run(self._check(None))

    async def resume(self) -> dict[str, Any] | None:
        """At daemon start: run the trial of a bundle left staged (by the CLI or a crash)."""
        if self.state.phase != "staged" or self.state.candidate is None or self.policy is None:
            return None
        cand = self.state.candidate
        manifest = await asyncio.to_thread(self.slots.verify, cand.slot, cand.manifest_sha256)
        return await self._run(self._switch_and_trial(Candidate(cand, manifest)))

    async def resume_task(self) -> None:
        """Supervised one-shot task: :meth:`resume`, with its outcome logged, never raised."""
        try:
            result = await self.resume()
        except Exception as exc:
            _log.error("ota: staged bundle not tried: %s", _msg(exc))
            return
        if result is not None:
            _log.info("ota: %s", result["result"])

    async def rollback(self) -> dict[str, Any]:
        """Abort a running trial, or go back to the previously committed bundle."""
        if self._task is not None and not self._task.done() and self.state.phase == "trial":
            assert self._abort is not None
            self._abort.set()
            return await asyncio.shield(self._task)
        if self._task is not None and not self._task.done():
            raise UpdaterBusy(f"an install is in progress ({self.state.phase}); try again later")
        return await self._run(self._rollback_committed())

    async def run_periodic(self, interval_s: float) -> None:
        """Supervised task: check the repository every ``interval_s`` (errors are logged)."""
        while True:
            try:
                result = await self.check()
                _log.info("ota check: %s", result.get("result"))
            except (UpdateRefused, UpdaterBusy) as exc:
                _log.info("ota check: %s", exc)
            except Exception as exc:  # a network error must not kill the task
                _log.warning("ota check failed: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval_s)

    # ------------------------------------------------------------------ orchestration

    async def _run(self, coro: Any) -> dict[str, Any]:
        """One operation at a time; it runs as its own task so a lost client cannot cancel it."""
        if self._op_lock.locked():
            coro.close()
            raise UpdaterBusy(f"an install is already in progress ({self.state.phase})")
        async with self._op_lock:
            if not self.lock.held:  # the CLI without a daemon: lock and recover for this op
                self.open()
                release = True
            else:
                release = False
            try:
                self._abort = asyncio.Event()
                self._task = asyncio.ensure_future(coro)
                return await asyncio.shield(self._task)
            finally:
                if release:
                    self.lock.release()

    def _step(self, name: str) -> None:
        if self._on_step is not None:
            self._on_step(name)

    def _save(self, **changes: Any) -> OtaState:
        self.state = self.state.with_(**changes)
        self.store.save(self.state)
        return self.state

    def _fail(self, exc: BaseException) -> None:
        """Record a refused or failed install; a full disk must not hide the real error.

        If the state file cannot be written (ENOSPC), the running updater still
        knows and reports it, and boot recovery sorts out the phase on disk.
        """
        try:
            self._save(phase="failed", candidate=None, last_error=_msg(exc))
        except OSError as save_exc:
            _log.error("ota: cannot record the failure (%s): %s", _msg(save_exc), _msg(exc))

    async def _check(self, source: Path | None) -> dict[str, Any]:
        assert self._repository is not None
        try:
            repo = self._repository(source)
            await asyncio.to_thread(repo.refresh)
            target = await asyncio.to_thread(repo.latest, self.hardware_id)
        except Exception as exc:  # expired or bad metadata, unreachable server: nothing changed
            self._save(last_error=f"check {source or self.config.repository_url}: {_msg(exc)}")
            raise
        st = self.state
        if target is None:
            return {"result": "no bundle for this hardware", **self.status()}
        if target.release_counter <= st.release_counter:
            return {"result": "up to date", **self.status()}
        why = st.failed_reason(target.version)
        if why is not None and source is not None:  # asked to install it: that is a refusal
            raise UpdateRefused(f"{target.version} failed before ({why}); not retried")
        if why is not None:
            return {
                "result": f"{target.version} failed before ({why}); not retried",
                **self.status(),
            }
        try:
            self._save(phase="downloading", last_error=None, last_result=None)
            self._step("download")
            self.download_dir.mkdir(parents=True, exist_ok=True)
            archive = await asyncio.to_thread(repo.download, target, self.download_dir)
        except Exception as exc:
            # No slot was touched: a failed or truncated download costs nothing stored.
            self._fail(_Context(f"download of {target.version}", exc))
            raise
        return await self._install_archive(Path(archive), target)

    async def _install_file(self, archive: Path) -> dict[str, Any]:
        try:
            self._save(phase="verifying", candidate=None, last_error=None, last_result=None)
            target = await asyncio.to_thread(self._find_target, archive)
        except Exception as exc:
            self._fail(exc)
            raise
        return await self._install_archive(archive, target)

    def _find_target(self, archive: Path) -> Any | None:
        """The signed target this file is (same length and sha256), if the repository has it."""
        if not self.require_signature or self._repository is None:
            return None
        if not self.config.repository_url:
            return None
        repo = self._repository(None)
        try:
            repo.refresh()
            targets = repo.targets()
        except Exception as exc:  # offline: a local (device-signed) bundle may still go in
            _log.warning("ota: cannot consult the update repository: %s", exc)
            self._repo_problem = f"{type(exc).__name__}: {exc}"
            return None
        size, sha = archive.stat().st_size, sha256_file(archive)
        for t in targets:
            if t.length == size and dict(t.hashes).get("sha256") == sha:
                return t
        return None

    async def _install_archive(self, archive: Path, target: Any | None) -> dict[str, Any]:
        try:
            st = self._save(phase="verifying", candidate=None, last_error=None, last_result=None)
            self._step("verify")
            if target is not None:
                size, sha = archive.stat().st_size, await asyncio.to_thread(sha256_file, archive)
                if size != target.length or dict(target.hashes).get("sha256") != sha:
                    raise UpdateRefused(
                        f"{archive.name}: does not match the signed target {target.name}"
                    )
            self._save(phase="unpacking")
            self._step("unpack")
            cand = await asyncio.to_thread(self._stage, archive, st.inactive_slot(), target)
        except Exception as exc:
            self._fail(exc)
            raise
        if self.policy is None:
            return {
                "result": f"{cand.record.version} staged; the daemon tries it at next start",
                **self.status(),
            }
        return await self._switch_and_trial(cand)

    def _stage(self, archive: Path, slot: SlotName, target: Any | None) -> Candidate:
        """Unpack and verify in staging; only a bundle that passed everything goes into ``slot``.

        Until the rename into ``slot`` nothing stored changes; on any failure
        the staging directory is removed (and at boot, if we crash first).
        """
        staging = self.slots.new_staging()
        placed = False
        try:
            manifest = self.slots.unpack_staging(archive, staging)  # sizes, hashes, fsync
            check_candidate(  # trust
                manifest,
                staging,
                target,
                state=self.state,
                hardware_id=self.hardware_id,
                action_names=self.action_names,
                verify_local=self._verify_local,
                require_signature=self.require_signature,
                repo_problem=self._repo_problem,
            )
            sha = sha256_file(staging / MANIFEST_NAME)
            self._step("fsync")
            prev = self.state.previous
            if prev is not None and prev.slot == slot:  # about to be replaced: no rollback to it
                self._save(previous=None)
            self.slots.place(staging, slot)
            placed = True
            record = SlotRecord(
                slot=slot,
                version=str(manifest.version),
                release_counter=int(manifest.release_counter),
                manifest_sha256=sha,
                source=bundle_source(manifest),
            )
            self.slots.verify(slot, record.manifest_sha256)  # every file, after the rename
            self._save(phase="staged", candidate=record)
            return Candidate(record, manifest)
        except BaseException:
            if placed:  # in the slot but not recorded: not vouched for, never booted on
                with contextlib.suppress(OSError):
                    self.slots.clear(slot)
            raise
        finally:
            self.slots.discard(staging)

    async def _switch_and_trial(self, cand: Candidate) -> dict[str, Any]:
        assert self.policy is not None and self.monitor is not None
        rec = cand.record
        thresholds = HealthThresholds.combine(self.config, getattr(cand.manifest, "safety", None))
        self._save(phase="switching", candidate=rec)
        self._step("switch")
        old = self.policy.model
        try:
            model = await asyncio.to_thread(self._loader, self.slots.path(rec.slot), cand.manifest)
            smoke = await asyncio.to_thread(
                smoke_test, model, self.config.smoke_steps, thresholds.max_latency_ms
            )
        except Exception as exc:
            why = f"{rec.version} refused before the swap: {_msg(exc)}"
            self._save(
                phase="failed",
                candidate=None,
                failed=[*self.state.failed, _failed(rec, why)],
                last_error=why,
            )
            _log.error("ota: %s (still on %s)", why, old.version if old else "no model")
            raise UpdateRefused(why) from exc
        ticket = self.policy.swap(model)
        seq = await asyncio.to_thread(ticket.wait, 10.0)
        if seq is None:
            why = f"swap to {rec.version} did not take effect ({ticket.outcome})"
            self._save(phase="failed", candidate=None, last_error=why)
            raise UpdateRefused(why)
        baseline = self.monitor.counters()
        self._save(phase="trial", trial_started_at=time.time(), trial_window_s=thresholds.window_s)
        _log.info("ota: %s on trial from tick %d for %.1f s", rec.version, seq, thresholds.window_s)
        self._step("trial")
        report = await self.monitor.watch(thresholds, baseline, abort=self._abort)
        report.extra.update(smoke)
        self.last_health = report
        if report.healthy:
            self._step("commit")
            self._commit(rec)
            self.active_model = model
            _log.info("ota: committed %s", rec.version)
            return {"result": f"committed {rec.version}", **self.status()}
        return await self._fail_trial(rec, old, report)

    def _commit(self, rec: SlotRecord) -> None:
        st = self.state
        committed = rec.model_copy(update={"at": time.time()})
        self._save(
            phase="committed",
            committed=committed,
            previous=st.committed,
            candidate=None,
            release_counter=max(st.release_counter, rec.release_counter),
            trial_started_at=None,
            last_result=f"committed {rec.version}",
        )
        self.store.save_committed(committed)

    async def _fail_trial(
        self, rec: SlotRecord, old: LoadedModel | None, report: HealthReport
    ) -> dict[str, Any]:
        assert self.policy is not None
        reason = "rolled back by the operator" if report.aborted else "; ".join(report.reasons)
        if old is not None:
            ticket = self.policy.swap(old)
            await asyncio.to_thread(ticket.wait, 10.0)
        elif self._stop_motion is not None:
            self._stop_motion(
                f"OTA: {rec.version} failed its health window and no model was installed before it"
            )
        self._save(
            phase="rolled_back",
            candidate=None,
            failed=[*self.state.failed, _failed(rec, reason)],
            trial_started_at=None,
            last_error=f"{rec.version}: {reason}",
            last_result=f"rolled back {rec.version}",
        )
        _log.warning("ota: %s rolled back: %s", rec.version, reason)
        return {"result": f"rolled back {rec.version}: {reason}", **self.status()}

    async def _rollback_committed(self) -> dict[str, Any]:
        st = self.state
        cur, prev = st.committed, st.previous
        if cur is None or prev is None:
            raise UpdateRefused("nothing to roll back to: no previously committed bundle")
        manifest = await asyncio.to_thread(self.slots.verify, prev.slot, prev.manifest_sha256)
        if self.policy is not None:
            model = await asyncio.to_thread(self._loader, self.slots.path(prev.slot), manifest)
            ticket = self.policy.swap(model)
            await asyncio.to_thread(ticket.wait, 10.0)
            self.active_model = model
        why = "rolled back by the operator after commit"
        self._save(
            phase="rolled_back",
            committed=prev,
            previous=None,
            failed=[*st.failed, _failed(cur, why)],
            last_result=f"rolled back {cur.version} to {prev.version}",
        )
        self.store.save_committed(prev)
        return {"result": f"rolled back to {prev.version}", **self.status()}


# ----------------------------------------------------------------------------- helpers


def _rec(rec: SlotRecord | None) -> dict[str, Any] | None:
    return None if rec is None else rec.model_dump(mode="json")


class _Context(Exception):
    """An error with what was being done (e.g. the download of a version) in front."""

    def __init__(self, what: str, exc: BaseException):
        super().__init__(f"{what}: {_msg(exc)}")


def _msg(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full: {exc.strerror} ({exc.filename or 'the updater directory'})"
    if isinstance(exc, UpdateRefused | _Context):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
