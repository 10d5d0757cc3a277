"""Boot recovery: bring the state file and the slots back to something consistent.

After a crash, SIGKILL or power cut (see brain.ota.updater for the phases):

* downloading / verifying / unpacking: the new bundle was still in a staging
  directory (removed with the other leftovers), or was being renamed into the
  inactive slot.  The inactive slot keeps its bundle when it still verifies as
  the recorded previous one (a rejected or interrupted install never costs the
  rollback bundle); anything else there is not vouched for and is deleted.  Not
  held against the bundle: the robot, not the model, was interrupted.
* staged: the bundle is complete and fsync'd; it is re-verified and its trial
  resumes once the daemon runs.
* switching / trial: a restart while the new model had the wheel counts as a
  FAILED trial: the version is remembered as failed and the robot boots on the
  last committed slot.
* a state file that cannot be parsed: the error is reported and the robot
  boots on the slot named by ``committed.json`` (the last-known-good record).
"""

from __future__ import annotations

import contextlib
import logging
import time

from brain.ota.slots import SlotError, Slots
from brain.ota.state import (
    IN_PROGRESS,
    TRIAL_PHASES,
    FailedVersion,
    OtaState,
    SlotRecord,
    StateError,
    StateStore,
)
from common.durable import move

_log = logging.getLogger(__name__)


def failed_record(rec: SlotRecord, reason: str) -> FailedVersion:
    return FailedVersion(
        version=rec.version,
        release_counter=rec.release_counter,
        manifest_sha256=rec.manifest_sha256,
        reason=reason,
    )


class BootRecovery:
    """One recovery pass over ``store`` and ``slots``; ``notes`` says what it did."""

    def __init__(self, store: StateStore, slots: Slots):
        self.store = store
        self.slots = slots
        self.notes: list[str] = []

    def run(self) -> OtaState:
        self.slots.ensure()
        self.store.cleanup_temp()
        self.notes = [f"removed {n}" for n in self.slots.cleanup()]
        try:
            st = self.store.load()
        except StateError as exc:
            st = self._fallback_state(str(exc))
        if st.phase in IN_PROGRESS:
            st = self._interrupted(st)
        st = self._check_committed(st)
        try:
            self.store.save(st)
        except OSError as exc:  # a full disk must not stop the robot booting on its slot
            self.notes.append(f"state file not updated ({exc.strerror}); recovery runs again")
        if st.committed is not None:
            with contextlib.suppress(OSError):
                if self.store.load_committed() != st.committed:
                    self.store.save_committed(st.committed)
        for note in self.notes:
            _log.warning("ota: %s", note)
        return st

    def _fallback_state(self, error: str) -> OtaState:
        """state.json is unreadable: keep it for inspection, boot on the last-known-good."""
        _log.error("%s; falling back to the last-known-good slot", error)
        with contextlib.suppress(OSError):
            move(self.store.path, self.store.path.with_name(f"state.corrupt-{int(time.time())}"))
        rec = self.store.load_committed()
        counter = rec.release_counter if rec else 0
        # Never let a lost state file lower the replay protection.
        for slot in ("A", "B"):
            with contextlib.suppress(Exception):
                counter = max(counter, int(self.slots.verify(slot).release_counter))
        self.notes.append(
            f"state file unreadable ({error}); booting on "
            + (f"last-known-good {rec.version} (slot {rec.slot})" if rec else "no model")
        )
        return OtaState(committed=rec, release_counter=counter, last_error=error)

    def _interrupted(self, st: OtaState) -> OtaState:
        cand = st.candidate
        if st.phase in TRIAL_PHASES and cand is not None:
            why = f"the daemon restarted during the {st.phase} of {cand.version}"
            self.notes.append(f"{why}: counted as a failed trial, back on the committed slot")
            return st.with_(
                phase="rolled_back",
                candidate=None,
                failed=[*st.failed, failed_record(cand, why)],
                trial_started_at=None,
                last_error=why,
                last_result=f"rolled back {cand.version}",
            )
        if st.phase == "staged" and cand is not None:
            try:
                self.slots.verify(cand.slot, cand.manifest_sha256)
                self.notes.append(f"{cand.version} is staged in slot {cand.slot}; will try it")
                return st
            except (SlotError, OSError) as exc:
                why = f"staged bundle unusable after restart: {exc}"
        else:
            why = f"install interrupted while {st.phase}"
        return self._keep_previous(st, why).with_(
            phase="failed", candidate=None, last_error=why, trial_started_at=None
        )

    def _keep_previous(self, st: OtaState, why: str) -> OtaState:
        """The inactive slot stays if it is still the recorded previous bundle, else it goes."""
        inactive = st.inactive_slot()
        prev = st.previous
        if prev is not None and prev.slot == inactive:
            try:
                self.slots.verify(inactive, prev.manifest_sha256)
                self.notes.append(f"{why}; slot {inactive} still holds {prev.version}")
                return st
            except (SlotError, OSError):
                pass
        if self.slots.path(inactive).exists():
            self.slots.clear(inactive)
            self.notes.append(f"{why}; slot {inactive} cleared")
        else:
            self.notes.append(why)
        return st.with_(previous=None) if prev is not None and prev.slot == inactive else st

    def _check_committed(self, st: OtaState) -> OtaState:
        """The committed slot must verify; else fall back to the previous one, else none."""
        rec = st.committed
        if rec is None:
            return st
        try:
            self.slots.verify(rec.slot, rec.manifest_sha256)
            return st
        except (SlotError, OSError) as exc:
            problem = str(exc)
        prev = st.previous
        if prev is not None:
            try:
                self.slots.verify(prev.slot, prev.manifest_sha256)
                self.notes.append(f"{problem}; booting on the previous bundle {prev.version}")
                return st.with_(committed=prev, previous=None, last_error=problem)
            except (SlotError, OSError):
                pass
        self.notes.append(f"{problem}; no verified bundle to boot on")
        return st.with_(committed=None, previous=None, last_error=problem)
