"""The fine-tune manager: the ``TrainerInterface`` the daemon (and ``continuon train-local``) use.

Torch-free.  It checks the start conditions, puts the robot in TRAINING (no motion, no
inference), spawns the worker subprocess (``python -m brain.localtrain.worker``: nice'd, its
thread pools capped through the environment and ``torch.set_num_threads``), reads its NDJSON
progress from the pipe, applies the resource guard every ``guard_interval_s`` (CRITICAL:
SIGSTOP, back below: SIGCONT, EMERGENCY: stop), and when the worker is done returns the
robot to IDLE and hands an accepted, exported candidate to the promoter (bundle + OTA slots).

Start conditions (each refusal says which one failed): local training enabled, no fine-tune
already running, mode IDLE or TRAINING, robot not moving, memory below CRITICAL, CPU below
the warning temperature, battery (where known and not on mains) above ``min_battery_pct``,
at least ``min_episodes`` usable recorded episodes, and a committed cloud bundle whose torch
weights are on the robot with the hash its manifest names (:mod:`.base`).

What a caller may ask is :class:`~brain.localtrain.options.StartOptions` (no paths, no run
id, never below the config's floors).  Status and error messages name no path on the robot
(they reach the Robot API): run directories are shown relative to the work dir, anything
else absolute as ``<path>``; worker.log and progress.ndjson keep the full detail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brain.config import Config
from brain.interface import CommandError
from brain.localtrain.base import BaseRefused, CommittedBase, base_weights, committed_base
from brain.localtrain.data import usable_episodes
from brain.localtrain.guard import GUARDED, ProcessGuard, PsutilReader, Reader
from brain.localtrain.job import EXIT_STOPPED, RUN_FILES, TrainJob, job_from_config
from brain.localtrain.options import StartOptions, parse_options
from common.health import Level, Thresholds, assess

_log = logging.getLogger(__name__)

LOCK_NAME = "train.lock"
PROGRESS_KEYS = ("step", "steps", "loss", "elapsed_s", "eta_s")
STOP_GRACE_S = 20.0  # after SIGTERM, the worker has this long to checkpoint before SIGKILL

Promoter = Callable[[Path, dict[str, Any]], dict[str, Any]]
#: An absolute path in a message (after a space, quote, paren or '=', or at the start).
_ABS_PATH = re.compile(r"(?:^|(?<=[\s'\"(=:]))/[^\s'\",)]*")


class StartRefused(CommandError):
    """A fine-tune may not start now; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("local training refused: " + "; ".join(problems))


class LocalTrainManager:
    """One fine-tune at a time.  Thread-safe; every public method is quick."""

    def __init__(
        self,
        config: Config,
        *,
        modes: Any | None = None,
        is_moving: Callable[[], bool] | None = None,
        reader: Reader | None = None,
        promoter: Promoter | None = None,
        python: str = sys.executable,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.lt = config.local_train
        self.modes = modes
        self.is_moving = is_moving
        self.reader: Reader = reader or PsutilReader()
        self.thresholds = Thresholds.from_config(self.lt)
        self.promoter = promoter
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.work_dir = config.localtrain_dir()
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[str] | None = None
        self._guard: ProcessGuard | None = None
        self._job: TrainJob | None = None
        self._state = "idle"
        self._progress: dict[str, Any] = {}
        self._message: str | None = None
        self._last_result: dict[str, Any] | None = None
        self._stop_reason: str | None = None
        self._done = threading.Event()
        self._done.set()
        self._we_set_training = False
        self._lock_fd: int | None = None
        if modes is not None:
            modes.subscribe(self._on_mode_change)

    # ------------------------------------------------------------------ TrainerInterface

    def status(self) -> dict[str, Any]:
        with self._lock:
            g = self._guard
            out: dict[str, Any] = {
                "available": True,
                "enabled": self.lt.enabled,
                "state": self._state,
                "run_id": None if self._job is None else Path(self._job.run_dir).name,
                "run_dir": None if self._job is None else self._job.run_dir,
                "base": None if self._job is None else self._job.base_version,
                "pid": None if self._proc is None else self._proc.pid,
                **{
                    k: self._progress.get(k)
                    for k in ("step", "steps", "loss", "elapsed_s", "eta_s")
                },
                "paused": bool(g and g.paused),
                "pauses": g.pauses if g else 0,
                "resource": None if g is None or g.last is None else g.last.to_dict(),
                "message": self._message,
                "last_result": self._last_result,
            }
        public: dict[str, Any] = self._public(out)
        return public

    def _public(self, obj: Any) -> Any:
        """``obj`` with every path made relative to the work dir, or hidden as ``<path>``."""
        if isinstance(obj, dict):
            return {k: self._public(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self._public(v) for v in obj]
        if isinstance(obj, str) and "/" in obj:
            return _ABS_PATH.sub(self._rel, obj)
        return obj

    def _rel(self, m: re.Match[str]) -> str:
        p = m.group(0)
        root = str(self.work_dir).rstrip("/") + "/"
        return p[len(root) :] if p.startswith(root) else "<path>"

    def run_dir(self, status: dict[str, Any]) -> Path | None:
        """The absolute run directory of a status() (for local callers: CLI, tests)."""
        rel = status.get("run_dir")
        return None if rel is None else self.work_dir / rel

    def start(self, options: StartOptions | dict[str, Any] | None = None) -> dict[str, Any]:
        """Start (or with ``{"resume": true}`` continue) a fine-tune.

        Raises pydantic's ValidationError for options that are not :class:`StartOptions`
        or below the config's floors, StartRefused naming every unmet start condition.
        """
        opts = parse_options(options, self.lt)
        with self._lock:
            problems, base, base_path = self._check(opts)
            if problems:
                raise StartRefused(problems)
            assert base is not None and base_path is not None
            try:
                job = (
                    self._resume_job(opts, base, base_path)
                    if opts.resume
                    else self._new_job(opts, base, base_path)
                )
            except (ValueError, OSError) as exc:
                raise CommandError(self._public(f"local training: {exc}")) from None
            if self.modes is not None and self.modes.mode.value == "idle":
                self.modes.set_mode("training", "local fine-tune")
                self._we_set_training = True
            try:
                self._spawn(job, opts.resume)
            except OSError as exc:
                self._back_to_idle()
                raise CommandError(
                    self._public(f"local training: cannot start the worker: {exc}")
                ) from None
            return self.status()

    def stop(self, reason: str = "requested") -> dict[str, Any]:
        """Ask the worker to checkpoint and exit (SIGKILL after a grace period)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return self.status()
            self._stop_reason = reason
            self._state = "stopping"
            if self._guard is not None:
                self._guard.release()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            threading.Thread(
                target=self._kill_later, args=(proc,), name="localtrain-kill", daemon=True
            ).start()
            return self.status()

    # ------------------------------------------------------------------ helpers for callers

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the current run (and its promotion) has finished; returns status()."""
        self._done.wait(timeout)
        return self.status()

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def close(self, timeout: float = STOP_GRACE_S + 5) -> None:
        """Daemon shutdown: stop a running worker and wait for it."""
        if self.running:
            self.stop("shutdown")
            self.wait(timeout)

    def check_start(self, options: StartOptions | dict[str, Any] | None = None) -> list[str]:
        """Every reason a fine-tune may not start now (empty: it may)."""
        return self._check(parse_options(options, self.lt))[0]

    def _check(self, opts: StartOptions) -> tuple[list[str], CommittedBase | None, Path | None]:
        """(problems, committed base, its hash-checked weights)."""
        problems: list[str] = []
        if not self.lt.enabled:
            problems.append("local training is disabled (local_train.enabled: false)")
        if self.running:
            problems.append("a fine-tune is already running")
        elif self._other_process_training():
            problems.append("a fine-tune is already running in another process")
        if self.modes is not None:
            mode = self.modes.mode.value
            if mode not in ("idle", "training"):
                problems.append(f"the robot is in {mode} mode; switch to idle first")
        if self.is_moving is not None and self.is_moving():
            problems.append("the robot is moving; stop it first")
        problems += self._resource_problems()
        need = self.lt.min_episodes
        have = len(usable_episodes(Path(self.config.episodes_dir())))
        if have < need:
            problems.append(
                f"only {have} recorded episode(s) with camera images; at least {need} are needed"
            )
        base: CommittedBase | None = None
        base_path: Path | None = None
        try:
            base = committed_base(self.config)
            base_path = base_weights(self.config, base)
        except BaseRefused as exc:
            problems.append(str(exc))
        return problems, base, base_path

    def _resource_problems(self) -> list[str]:
        problems: list[str] = []
        a = assess(self.reader.read(), self.thresholds, GUARDED)
        r = a.readings
        if a.level >= Level.CRITICAL:
            problems.append("resources too low: " + "; ".join(a.reasons))
        elif r.temperature_c is not None and r.temperature_c > self.thresholds.temp_warning_c:
            problems.append(
                f"the CPU is too hot ({r.temperature_c:.0f} C > "
                f"{self.thresholds.temp_warning_c:.0f} C); let it cool down"
            )
        if (
            r.battery_percent is not None
            and not r.power_plugged
            and r.battery_percent < self.thresholds.min_battery_pct
        ):
            problems.append(
                f"battery at {r.battery_percent:.0f} % (< {self.thresholds.min_battery_pct:.0f} %)"
                "; charge it or plug in"
            )
        return problems

    # ------------------------------------------------------------------ internals

    def _new_job(self, opts: StartOptions, base: CommittedBase, base_path: Path) -> TrainJob:
        # Generated, never a caller's: the run directory is always a fresh child of runs/.
        run_id = time.strftime("lt-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)
        run_dir = self.work_dir / "runs" / run_id
        job = job_from_config(self.config, run_dir, opts, base, base_path)
        run_dir.mkdir(parents=True, exist_ok=False)
        job.write()
        return job

    def _resume_job(self, opts: StartOptions, base: CommittedBase, base_path: Path) -> TrainJob:
        """The newest unfinished run with a checkpoint, if it was pinned to today's base."""
        runs = self.work_dir / "runs"
        cands = sorted(
            (
                d
                for d in runs.glob("*")
                if not d.is_symlink() and (d / RUN_FILES["checkpoint"]).is_file()
            ),
            key=lambda d: d.stat().st_mtime,
        )
        cands = [d for d in cands if not (d / RUN_FILES["result"]).is_file()]
        if not cands:
            raise ValueError("no unfinished run with a checkpoint to resume")
        run_dir = cands[-1]
        job = TrainJob.read(run_dir / RUN_FILES["job"])
        if job.base_manifest_sha256 != base.manifest_sha256 or job.base_sha256 != (
            base.checkpoint_sha256
        ):
            raise ValueError(
                f"run {run_dir.name} was started on another committed model than "
                f"{base.version}; start a new fine-tune"
            )
        # Where things are comes from the config again, never from the file.
        job.run_dir = str(run_dir)
        job.base_model = str(base_path)
        job.episodes_root = str(self.config.episodes_dir())
        job.cache_dir = str(self.config.localtrain_dir() / "cache")
        # The budget may be extended on resume (never below the config's floors).
        if opts.steps is not None:
            job.steps = opts.steps
        if opts.max_seconds is not None:
            job.max_seconds = opts.max_seconds
        job.write()
        return job

    def _other_process_training(self) -> bool:
        path = self.work_dir / LOCK_NAME
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops our probe lock too
        return False

    def _take_lock(self) -> None:
        """One fine-tune per robot across processes (daemon and ``continuon train-local``)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.work_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OSError("another process is running a fine-tune") from None
        self._lock_fd = fd

    def _drop_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _spawn(self, job: TrainJob, resume: bool) -> None:
        self._take_lock()
        try:
            self._popen(job, resume)
        except BaseException:
            self._drop_lock()
            raise

    def _popen(self, job: TrainJob, resume: bool) -> None:
        env = dict(os.environ)
        threads = str(job.threads)
        env.update(
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            OPENBLAS_NUM_THREADS=threads,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        cmd = [self.python, "-m", "brain.localtrain.worker", str(job.path("job"))]
        if resume:
            cmd.append("--resume")
        log = open(Path(job.run_dir) / "worker.log", "ab")  # noqa: SIM115 - closed on exit
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
                bufsize=1,
                start_new_session=True,  # a Ctrl-C at the terminal goes to us, not to it
            )
        finally:
            log.close()
        self._proc = proc
        self._job = job
        self._state = "starting"
        self._progress = {"step": 0, "steps": job.steps}
        self._message = None
        self._stop_reason = None
        self._guard = ProcessGuard(proc.pid, self.thresholds, self.reader, stop_fn=self._guard_stop)
        self._done.clear()
        threading.Thread(
            target=self._read_events, args=(proc, job), name="localtrain-events", daemon=True
        ).start()
        threading.Thread(
            target=self._guard_loop, args=(proc,), name="localtrain-guard", daemon=True
        ).start()
        _log.info("local fine-tune started: pid %s, run %s", proc.pid, job.run_dir)

    def _guard_stop(self, why: str) -> None:
        _log.error("stopping the fine-tune: %s", why)
        self._message = why
        self.stop(why)

    def _guard_loop(self, proc: subprocess.Popen[str]) -> None:
        while proc.poll() is None:
            guard = self._guard
            if guard is None or guard.pid != proc.pid:
                return
            try:
                action = guard.check()
            except Exception:  # a sensor read failing must not leave the trainer unguarded
                _log.exception("resource guard check failed")
                action = None
            if action is not None and action.value != "none":
                a = guard.last
                _log.warning(
                    "resource guard: %s -> %s (%s)",
                    a.level.name if a else "?",
                    action.value,
                    "; ".join(a.reasons) if a else "",
                )
                with self._lock:
                    if action.value == "pause":
                        self._state = "paused"
                    elif action.value == "resume" and self._state == "paused":
                        self._state = "running"
            time.sleep(self.lt.guard_interval_s)

    def _kill_later(self, proc: subprocess.Popen[str]) -> None:
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            _log.error("the fine-tune did not stop within %.0f s; killing it", STOP_GRACE_S)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def _read_events(self, proc: subprocess.Popen[str], job: TrainJob) -> None:
        result: dict[str, Any] | None = None
        error: str | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = ev.get("event")
            with self._lock:
                if kind == "preparing":
                    self._message = f"preparing episode {ev.get('episode')}/{ev.get('episodes')}"
                elif kind == "started":
                    self._message = None
                    if self._state == "starting":
                        self._state = "running"
                    self._progress.update(step=ev.get("step"), steps=ev.get("steps"))
                elif kind == "progress":
                    self._progress.update(
                        {k: ev.get(k) for k in ("step", "steps", "loss", "elapsed_s", "eta_s")}
                    )
                elif kind == "gate":
                    self._message = (
                        "accepted: " if ev.get("accepted") else "rejected: "
                    ) + "; ".join(ev.get("reasons") or [])
                elif kind == "error":
                    error = self._public(str(ev.get("message")))
                elif kind == "done":
                    result = ev.get("result")
        rc = proc.wait()
        with self._lock:
            if result is not None:
                self._state = "finished"
            elif rc == EXIT_STOPPED:
                self._state = "stopped"
                self._message = f"stopped ({self._stop_reason or 'signal'}); resume to continue"
            else:
                self._state = "failed"
                self._message = error or f"the worker exited with code {rc} (see worker.log)"
            self._last_result = {
                "run_dir": job.run_dir,
                "exit_code": rc,
                "state": self._state,
                **({"result": result} if result is not None else {}),
                **({"error": error} if error else {}),
            }
            self._proc = None
        self._drop_lock()
        self._back_to_idle()
        if result is not None and self.promoter is not None and self.lt.promote:
            accepted = bool((result.get("gate") or {}).get("accepted"))
            if accepted and result.get("export"):
                with self._lock:
                    self._state = "promoting"
                try:
                    promo = self.promoter(Path(job.run_dir), result)
                except Exception as exc:  # the adapter stays on disk; the robot keeps its policy
                    _log.exception("promotion failed")
                    promo = {
                        "installed": False,
                        "error": self._public(f"{type(exc).__name__}: {exc}"),
                    }
                with self._lock:
                    self._state = "finished"
                    assert self._last_result is not None
                    self._last_result["promotion"] = promo
        _log.info("local fine-tune ended: %s", self._state)
        self._done.set()

    def _back_to_idle(self) -> None:
        if self.modes is None:
            return
        if self.modes.mode.value == "training":
            try:
                self.modes.set_mode("idle", "local fine-tune ended")
            except Exception:
                _log.exception("could not return to idle")
        self._we_set_training = False

    def _on_mode_change(self, change: Any) -> None:
        """Leaving TRAINING (idle by hand, an e-stop) while a worker runs stops it."""
        if change.old.value == "training" and change.new.value != "training" and self.running:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                threading.Thread(
                    target=self.stop, args=(f"mode changed to {change.new.value}",), daemon=True
                ).start()
