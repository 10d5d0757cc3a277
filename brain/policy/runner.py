"""Running the policy on one worker thread, with a deadline, recurrent state and hot swap.

Threads
    The control loop calls :meth:`PolicyRunner.infer` once per tick.  The model
    runs on ONE long-lived worker thread ("policy-runner"); ``infer`` hands the
    request over and waits at most ``deadline_s``.  A hung or slow model can
    therefore cost the control loop one deadline per tick, never more, and the
    loop then drives neutral.  No thread is created per call.

Recurrent state
    The runner carries the model's recurrent state (``X_out`` of one step is
    ``X`` of the next).  Only the worker thread touches it.  It goes back to the
    model's zeros on :meth:`~PolicyRunner.reset_state`, on every swap, and after
    an output with NaN/Inf (a poisoned state would poison every later step).

Late results
    When the deadline passes before the model has started the request (the
    worker is still busy with an earlier, late one), the request is cancelled:
    a stale frame is never run.  When the model had already started, its run
    completes; its *action* is discarded (the tick already went neutral) but the
    recurrent *state* it produced is carried forward.  The state then reflects
    every frame the model has actually seen, in order, which is what a
    recurrent policy trained on a frame stream expects; dropping it would make
    the state skip a frame and also throw away the work.  Either way the miss
    is counted in ``deadline_misses``.

Hot swap
    :meth:`~PolicyRunner.swap` takes a model that the caller has ALREADY loaded
    and warmed up (:func:`~brain.policy.onnx_model.load_model`, off the control
    thread).  The worker installs it between two inferences, never during one:
    every inference runs entirely on one model, and no tick is skipped because
    the swap costs one reference assignment and a few zero arrays.  The
    :class:`SwapTicket` says which tick (``tick_seq``) first ran on the new
    model.  The replaced model is kept for :meth:`~PolicyRunner.swap_back`
    (rollback by the OTA updater).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_model import LoadedModel

log = logging.getLogger(__name__)

_SWAP_PENDING = "pending"
_SWAP_APPLIED = "applied"
_SWAP_SUPERSEDED = "superseded"
_SWAP_CLOSED = "closed"


def default_deadline_s(rate_hz: float, deadline_ms: float | None = None) -> float:
    """The inference deadline: ``deadline_ms`` when set, else 60 % of the control period."""
    if deadline_ms is not None:
        return deadline_ms / 1000.0
    return 0.6 / rate_hz


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """One served inference.

    ``latency_s``: how long :meth:`PolicyRunner.infer` waited (hand-off and model,
    never more than the deadline); ``compute_s``: the model step alone, on the
    worker; ``tick_seq``: the sequence number ``infer`` gave the request (1, 2, ...;
    calls that returned None use numbers too); ``t_obs``: as passed to ``infer``;
    ``t_done``: time.monotonic() when the action was ready.
    """

    action: np.ndarray
    latency_s: float
    model_version: str
    tick_seq: int
    compute_s: float = 0.0
    t_obs: float = math.nan
    t_done: float = math.nan


class SwapTicket:
    """Returned by :meth:`PolicyRunner.swap`; tells when and where the swap took effect."""

    __slots__ = ("_event", "model", "outcome", "seq", "t_applied")

    def __init__(self, model: LoadedModel):
        self.model = model
        self.outcome = _SWAP_PENDING  # -> applied | superseded | closed
        self.seq: int | None = None  # first tick_seq that runs on `model`
        self.t_applied: float | None = None
        self._event = threading.Event()

    @property
    def done(self) -> bool:
        return self._event.is_set()

    @property
    def applied(self) -> bool:
        return self.outcome == _SWAP_APPLIED

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the swap took effect; return the first ``tick_seq`` run on the new model.

        Returns None when ``timeout`` passed first, when a later swap replaced
        this one before it took effect, or when the runner was closed.
        """
        self._event.wait(timeout)
        return self.seq if self.outcome == _SWAP_APPLIED else None

    def _finish(self, outcome: str, seq: int | None = None) -> None:
        self.outcome = outcome
        self.seq = seq
        self.t_applied = time.monotonic() if outcome == _SWAP_APPLIED else None
        self._event.set()

    def __repr__(self) -> str:
        return f"SwapTicket({self.model.version!r}, {self.outcome}, seq={self.seq})"


class _Request:
    __slots__ = ("compute_s", "done", "image", "outcome", "result", "seq", "started", "t_obs")

    def __init__(self, image: np.ndarray, t_obs: float, seq: int):
        self.image: np.ndarray | None = image  # None once the worker has it, or it went stale
        self.t_obs = t_obs
        self.seq = seq
        self.started = False
        self.done = False
        self.outcome = ""  # ok | nan | error | closed
        self.result: tuple[np.ndarray, str, float, float] | None = None
        self.compute_s = 0.0


class PolicyRunner:
    """Runs a :class:`LoadedModel` on a worker thread for the control loop.

    ``infer`` is meant to be called by one control thread (concurrent calls are
    serialised); ``swap``, ``swap_back``, ``reset_state`` and ``stats`` may be
    called from any thread.
    """

    def __init__(
        self,
        model: LoadedModel | None = None,
        *,
        deadline_s: float = 0.03,
        stats_window: int = 4096,
        name: str = "policy-runner",
    ):
        if not deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {deadline_s}")
        self.deadline_s = float(deadline_s)
        self._name = name
        self._cv = threading.Condition(threading.Lock())
        self._infer_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        # Written by the worker (under _cv); read by anyone under _cv.
        self._model: LoadedModel | None = model
        self._previous: LoadedModel | None = None
        self._state: dict[str, np.ndarray] = model.initial_recurrent() if model else {}
        # Requests from other threads to the worker (under _cv).
        self._request: _Request | None = None
        self._pending_swap: SwapTicket | None = None
        self._reset_pending = False
        self._seq = 0
        # Statistics (under _cv).
        self._latency: deque[float] = deque(maxlen=stats_window)
        self._compute: deque[float] = deque(maxlen=stats_window)
        self._count = 0
        self._runs = 0
        self._misses = 0
        self._cancelled = 0
        self._nan = 0
        self._errors = 0
        self._last_error: str | None = None
        self._no_model = 0
        self._swaps = 0
        self._state_resets = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PolicyRunner:
        with self._cv:
            if self._closed or self._closing:
                raise RuntimeError("PolicyRunner is closed")
            if self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._worker, name=self._name, daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> bool:
        """Stop the worker and join it; returns False if it did not stop within ``timeout``.

        A model stuck inside onnxruntime cannot be interrupted; the thread is a
        daemon thread so it cannot keep the process alive, and this is logged.
        """
        with self._cv:
            self._closing = True
            thread = self._thread
            pending, self._pending_swap = self._pending_swap, None
            self._cv.notify_all()
        if pending is not None:
            pending._finish(_SWAP_CLOSED)
        stopped = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            stopped = not thread.is_alive()
            if not stopped:
                log.error("policy runner: worker did not stop within %.1f s (model hung?)", timeout)
        with self._cv:
            self._closed = True
        return stopped

    def __enter__(self) -> PolicyRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def has_model(self) -> bool:
        """A model is loaded (the control loop's Inference protocol)."""
        with self._cv:
            return self._model is not None

    @property
    def model(self) -> LoadedModel | None:
        """The model in use now (a swap not yet applied is not reflected here)."""
        with self._cv:
            return self._model

    @property
    def previous_model(self) -> LoadedModel | None:
        with self._cv:
            return self._previous

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive() and not self._closing

    def recurrent_state(self) -> dict[str, np.ndarray]:
        """A copy of the current recurrent state (for tests and diagnostics)."""
        with self._cv:
            return {k: v.copy() for k, v in self._state.items()}

    # ------------------------------------------------------------------ control thread

    def infer(self, image: np.ndarray, t_obs: float) -> InferenceResult | None:
        """Run the policy on ``image`` (HxWx3 uint8 RGB); wait at most the deadline.

        Returns None (and the tick should go neutral) when there is no model,
        the deadline passed, the output had NaN/Inf, or the model raised; each
        case is counted in :meth:`stats`.  Raises RuntimeError if the runner was
        never started; after ``close`` it returns None.

        The worker may still read ``image`` after a deadline miss (a run that
        had started completes), so pass an array nobody writes to afterwards;
        camera frames are fresh arrays, which is the normal case.
        """
        t0 = time.monotonic()
        deadline = t0 + self.deadline_s
        if not self._infer_lock.acquire(timeout=self.deadline_s):
            with self._cv:
                self._misses += 1
            return None
        try:
            cv = self._cv
            with cv:
                if self._thread is None:
                    raise RuntimeError("PolicyRunner.infer called before start()")
                if self._closing:
                    return None
                if self._model is None and self._pending_swap is None:
                    self._no_model += 1
                    return None
                self._seq += 1
                req = _Request(image, t_obs, self._seq)
                self._request = req
                cv.notify_all()
                while not req.done:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cv.wait(remaining)
                if not req.done:
                    self._misses += 1
                    if not req.started:  # never run a stale frame later
                        self._request = None
                        self._cancelled += 1
                    else:  # let it finish; its state is kept, its action dropped
                        req.image = None
                    return None
                if req.outcome != "ok" or req.result is None:
                    return None
                action, version, compute_s, t_done = req.result
                latency = time.monotonic() - t0
                self._count += 1
                self._latency.append(latency)
            return InferenceResult(
                action=action,
                latency_s=latency,
                model_version=version,
                tick_seq=req.seq,
                compute_s=compute_s,
                t_obs=t_obs,
                t_done=t_done,
            )
        finally:
            self._infer_lock.release()

    # ------------------------------------------------------------------ any thread

    def swap(self, model: LoadedModel) -> SwapTicket:
        """Install ``model`` (already loaded and warmed up) between two inferences.

        Returns at once; the ticket's ``wait`` tells when it took effect.  A
        swap not yet applied is superseded by a later one.  The recurrent state
        restarts at the new model's zeros.
        """
        # Any backend's model (LoadedModel, LiteRTModel: brain.policy.backends.PolicyModel).
        if not all(callable(getattr(model, a, None)) for a in ("step", "initial_recurrent")):
            raise TypeError(f"swap needs a loaded policy model, got {type(model).__name__}")
        ticket = SwapTicket(model)
        with self._cv:
            if self._closing:
                raise RuntimeError("PolicyRunner is closed")
            current = self._model
            if current is not None and model.action_size != current.action_size:
                raise ValueError(
                    f"new model {model.version} outputs {model.action_size} actions, "
                    f"the current one {current.action_size}"
                )
            old, self._pending_swap = self._pending_swap, ticket
            self._cv.notify_all()
        if old is not None:
            old._finish(_SWAP_SUPERSEDED)
        return ticket

    def swap_back(self) -> SwapTicket:
        """Swap to the model that ran before the current one (rollback).

        Supersedes a swap not yet applied.  Raises RuntimeError if there is none.
        """
        with self._cv:
            previous = self._previous
        if previous is None:
            raise RuntimeError("no previous model to swap back to")
        return self.swap(previous)

    def reset_state(self) -> None:
        """Restart the recurrent state at zeros before the next inference."""
        with self._cv:
            self._reset_pending = True
            self._cv.notify_all()

    def stats(self) -> dict[str, Any]:
        """Counters and latency percentiles (ms) over the last ``stats_window`` calls."""
        with self._cv:
            lat = np.array(self._latency, dtype=np.float64) * 1000.0
            comp = np.array(self._compute, dtype=np.float64) * 1000.0
            model = self._model
            out: dict[str, Any] = {
                "count": self._count,
                "runs": self._runs,
                "deadline_misses": self._misses,
                "cancelled": self._cancelled,
                "nan_outputs": self._nan,
                "errors": self._errors,
                "last_error": self._last_error,
                "no_model": self._no_model,
                "swaps": self._swaps,
                "state_resets": self._state_resets,
                "model_version": model.version if model else None,
                "previous_version": self._previous.version if self._previous else None,
                "deadline_ms": self.deadline_s * 1000.0,
            }
        for key, arr in (("latency", lat), ("compute", comp)):
            if arr.size:
                p50, p99 = np.percentile(arr, [50, 99])
                out[f"{key}_p50_ms"] = float(p50)
                out[f"{key}_p99_ms"] = float(p99)
                out[f"{key}_max_ms"] = float(arr.max())
            else:
                out[f"{key}_p50_ms"] = out[f"{key}_p99_ms"] = out[f"{key}_max_ms"] = None
        return out

    # ------------------------------------------------------------------ worker

    def _apply_pending(self) -> None:
        """Swap and reset requests, applied between two inferences (called under _cv)."""
        ticket = self._pending_swap
        if ticket is not None:
            self._pending_swap = None
            if self._model is not None and self._model is not ticket.model:
                self._previous = self._model
            self._model = ticket.model
            self._state = ticket.model.initial_recurrent()
            self._reset_pending = False
            self._swaps += 1
            # The next request to run (pending now, or the next infer) uses the new model.
            seq = self._request.seq if self._request is not None else self._seq + 1
            ticket._finish(_SWAP_APPLIED, seq)
            log.info(
                "policy swapped to %s (from %s) at tick %d",
                ticket.model.version,
                self._previous.version if self._previous else None,
                seq,
            )
        if self._reset_pending:
            self._reset_pending = False
            if self._model is not None:
                self._state = self._model.initial_recurrent()
            self._state_resets += 1

    def _worker(self) -> None:
        cv = self._cv
        while True:
            with cv:
                while not (
                    self._closing
                    or self._request is not None
                    or self._pending_swap is not None
                    or self._reset_pending
                ):
                    cv.wait()
                if self._closing:
                    if self._request is not None:  # let a waiting infer() return now
                        self._request.done, self._request.outcome = True, "closed"
                        self._request = None
                        cv.notify_all()
                    return
                self._apply_pending()
                req = self._request
                if req is None:
                    continue
                self._request = None
                req.started = True
                model = self._model
                state = self._state
                image = req.image
            if model is None or image is None:  # cannot happen: infer checks; kept for safety
                with cv:
                    req.done, req.outcome = True, "error"
                    cv.notify_all()
                continue

            t_start = time.monotonic()
            stepped: tuple[np.ndarray, dict[str, np.ndarray]] | None
            try:
                stepped = model.step(image, state)
                error = None
            except Exception as exc:
                stepped, error = None, exc
            t_done = time.monotonic()
            compute_s = t_done - t_start

            finite = (
                stepped is not None
                and bool(np.isfinite(stepped[0]).all())
                and all(np.isfinite(v).all() for v in stepped[1].values())
            )
            with cv:
                self._runs += 1
                self._compute.append(compute_s)
                if stepped is None:
                    self._errors += 1
                    msg = f"{type(error).__name__}: {error}"
                    if msg != self._last_error:
                        log.warning("policy %s: inference failed: %s", model.version, msg)
                    self._last_error = msg
                    req.outcome = "error"
                elif not finite:
                    self._nan += 1
                    if self._nan == 1 or self._nan % 100 == 0:
                        log.warning(
                            "policy %s: non-finite output (%d so far); state reset",
                            model.version,
                            self._nan,
                        )
                    self._state = model.initial_recurrent()
                    self._state_resets += 1
                    req.outcome = "nan"
                else:
                    action, self._state = stepped
                    req.outcome = "ok"
                    req.result = (action, model.version, compute_s, t_done)
                req.compute_s = compute_s
                req.image = None
                req.done = True
                cv.notify_all()
