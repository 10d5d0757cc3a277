"""The daemon: wires config, devices, control loop, policy and services under one supervisor.

Start-up order matters for safety: actuators are put in neutral (and an ESC
armed) before anything can command them, the control loop starts in IDLE,
and READY=1 goes to systemd only once the loop has really ticked.  Shutdown
runs the same path whatever triggered it: STOPPING=1, stop the tasks (the
control thread writes neutral as it exits), neutral again, close devices.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from importlib.metadata import entry_points
from typing import Any

import psutil

from brain.capture import CaptureWorker, SensorHub
from brain.config import ArmActuatorsConfig, Config
from brain.control import estop_line
from brain.control.estop_line import EStopLine
from brain.control.loop import ControlLoop
from brain.control.safety import SafetyLayer
from brain.handle import BrainHandle
from brain.hardware.devices import RobotDevices, open_devices
from brain.interface import BrainInterface, ServiceFactory
from brain.localtrain.wiring import make_daemon_trainer
from brain.logs import LoopErrorLog, log_fields
from brain.modes import ModeManager
from brain.ota.wiring import PolicyInterventions, create_updater
from brain.policy import PolicyRunner, load_model
from brain.policy.runner import default_deadline_s
from brain.procinfo import return_large_buffers_to_the_os
from brain.recorder import Recorder
from brain.sdnotify import SdNotifier
from brain.supervisor import RestartPolicy, Supervisor

_log = logging.getLogger(__name__)


def discover_services() -> list[ServiceFactory]:
    """Network services installed beside the brain (edge_agent registers its own)."""
    factories: list[ServiceFactory] = []
    for ep in entry_points(group="continuon.services"):
        try:
            factories.append(ep.load())
        except Exception:
            _log.exception("service %s could not be loaded; running without it", ep.name)
    return factories


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        devices: RobotDevices | None = None,
        services: list[ServiceFactory] | None = None,
        notifier: SdNotifier | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or SdNotifier()
        self.devices = devices or open_devices(config)
        self.modes = ModeManager()
        self.sensors = SensorHub(window=config.control.stats_window)
        spec = self.devices.actuators.action_spec
        self.safety = SafetyLayer(spec, config.safety, default_slew_per_s=_joint_speeds(config))
        self.policy = PolicyRunner(
            None,
            deadline_s=default_deadline_s(config.control.rate_hz, config.policy.deadline_ms),
        )
        sim = self.devices.sim
        self.control = ControlLoop(
            config,
            self.modes,
            self.sensors,
            self.devices.actuators,
            self.safety,
            policy=self.policy,
            expert=sim.expert_action if sim is not None else None,
        )
        # SIGUSR1 -> ESTOP on a thread of its own: the path no network load can block.
        self.estop_line = EStopLine(
            self.modes, self.control, config.runtime_dir(), clock=self.control.clock
        )
        self.recorder = Recorder(
            config,
            sensor_specs=_sensor_specs(config),
            model_version=lambda: self.policy.stats().get("model_version"),
        )
        self.control.recorder = self.recorder.hook
        self.supervisor = Supervisor(
            RestartPolicy.from_config(config.supervisor), on_crash_loop=self._on_crash_loop
        )
        # OTA: hot-swaps through self.policy; judges a new model by what the safety layer had
        # to correct while it drove.  Opened (lock + recovery) in _start.
        self.updater = (
            create_updater(
                config,
                policy=self.policy,
                interventions=PolicyInterventions(self.safety, self.modes, config),
                stop_motion=self.modes.estop,
            )
            if config.ota.enabled
            else None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        # Local fine-tuning (brain/localtrain): torch runs only in its worker subprocess.
        self.trainer = make_daemon_trainer(
            config,
            modes=self.modes,
            control=self.control,
            sim_metrics=sim.metrics if sim is not None else None,
            updater=lambda: getattr(self.brain, "updater", None),
            loop=lambda: self._loop,
        )
        self.brain: BrainInterface = BrainHandle(
            config,
            self.modes,
            self.control,
            self.sensors,
            policy_stats=self.policy.stats,
            task_status=self._task_status,
            sim_metrics=sim.metrics if sim is not None else None,
            recorder=self.recorder,
            trainer=self.trainer,
            updater=self.updater,
        )
        self._service_factories = services
        self._ready = asyncio.Event()
        self.started_at = time.monotonic()
        self.ready_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.set_exception_handler(LoopErrorLog().handle)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            self.estop_line.start()  # before any thread that could move the robot
            await self._start()
            await self.supervisor.run(shutdown_timeout_s=self.config.supervisor.shutdown_timeout_s)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._shutdown()
            self.estop_line.close()
            loop.set_exception_handler(None)

    def request_stop(self, why: str = "request") -> None:
        """Begin a clean shutdown (signal handlers, tests).  Safe to call twice."""
        _log.info("stopping (%s)", why, extra=log_fields(reason=why))
        self.notifier.stopping()
        self.control.stop()
        self.supervisor.stop()

    async def _start(self) -> None:
        cfg = self.config
        _log.info(
            "starting %s (%s) with %s",
            cfg.robot.id,
            cfg.robot.kind,
            "the simulated robot" if cfg.uses_sim else "hardware",
            extra=log_fields(robot_id=cfg.robot.id, config_hash=cfg.config_hash()[:12]),
        )
        # Neutral before anything else can happen; start() may block (ESC arming).
        self.devices.actuators.neutral()
        # The devices warm up on a thread (a camera's start, the sim's scene build: 0.3-1.5 s)
        # while the rest of the start-up — the updater, the model, episode recovery, the
        # services' imports — runs here: READY comes that much sooner.  Nothing below touches
        # the devices until they have started.
        devices_started = asyncio.ensure_future(asyncio.to_thread(self.devices.start))
        try:
            await self._load_policy_and_recover()
            factories = self._service_factories
            if factories is None:
                factories = discover_services()
        finally:
            await devices_started  # a device that failed to start fails the start-up

        sup = self.supervisor
        sup.add("control", self.control.run)
        if self.devices.camera is not None:
            sup.add(
                "capture-camera", CaptureWorker.for_camera(self.devices.camera, self.sensors).run
            )
        if self.devices.depth is not None:
            sup.add("capture-depth", CaptureWorker.for_depth(self.devices.depth, self.sensors).run)
        sup.add("systemd-watchdog", self._watchdog)
        sup.add("ready", self._announce_ready, restart=False)
        if self.updater is not None:
            updater = self.updater
            sup.add("ota-resume", updater.resume_task, restart=False)  # a bundle left staged
            if cfg.ota.repository_url:
                sup.add("ota-check", lambda: updater.run_periodic(cfg.ota.check_interval_s))
        for factory in factories:
            service = factory(self.brain, cfg)
            if service is not None:
                sup.add(service.name, service.run)

    async def _load_policy_and_recover(self) -> None:
        cfg = self.config
        await self._open_updater()
        if cfg.policy.model is None and self.updater is not None:
            # Boot on the last committed (verified) OTA bundle; policy.model overrides it.
            try:
                model = await asyncio.to_thread(self.updater.load_active)
                if model is not None:
                    self.policy.swap(model)
            except Exception as exc:
                _log.error("committed OTA bundle not loaded: %s", exc)
        if cfg.policy.model is not None:
            try:
                model = await asyncio.to_thread(
                    load_model, cfg.policy.model, cfg.policy.threads, action_names=cfg.action_names
                )
                self.policy.swap(model)
            except Exception as exc:  # the robot still boots (IDLE/MANUAL work without a model)
                _log.error("policy %s not loaded: %s", cfg.policy.model, exc)
        self.policy.start()
        await asyncio.to_thread(self.recorder.recover)

    async def _open_updater(self) -> None:
        """Lock the OTA directory and recover an interrupted install; without it, no OTA."""
        if self.updater is None:
            return
        try:
            await asyncio.to_thread(self.updater.open)
        except Exception as exc:
            _log.error("OTA updater disabled: %s", exc)
            self.updater = None
            self.brain.updater = None  # type: ignore[attr-defined]

    async def _announce_ready(self) -> None:
        """READY=1 once the control loop has ticked, not merely once we got this far."""
        while self.control.timing.ticks == 0:
            await asyncio.sleep(0.005)
        self.ready_at = time.monotonic()
        self._ready.set()
        self.notifier.ready()
        # The episode writer is a process of its own (numpy, OpenCV): started once the robot
        # is up so that its imports do not delay READY; nothing records before (IDLE).
        self.recorder.start()
        self.notifier.status(f"mode={self.modes.mode.value}")
        since_exec = time.time() - psutil.Process().create_time()
        _log.info(
            "ready %.2f s after the process started",
            since_exec,
            extra=log_fields(startup_s=round(since_exec, 3)),
        )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def _watchdog(self) -> None:
        """WATCHDOG=1 only while the control loop is really ticking: a hung loop gets killed."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        max_age = self.config.supervisor.watchdog_max_tick_age_s
        warned = False
        while True:
            age = self.control.tick_age()
            if age is not None and age <= max_age:
                self.notifier.watchdog()
                warned = False
            elif not warned:
                _log.error(
                    "control loop not ticking (last tick %s s ago); withholding WATCHDOG", age
                )
                warned = True
            await asyncio.sleep(min(interval, max_age / 2))

    async def _shutdown(self) -> None:
        self.notifier.stopping()
        self.control.stop()
        if self.trainer is not None:  # the worker checkpoints; resume continues it
            await asyncio.to_thread(self.trainer.close)
        self.policy.close()
        if self.updater is not None:
            self.updater.close()
        await asyncio.to_thread(self.devices.close)
        await asyncio.to_thread(self.recorder.close)
        _log.info("stopped; actuators neutral")

    # ------------------------------------------------------------------ supervision

    def _on_crash_loop(self, name: str, exc: BaseException) -> None:
        reason = f"crash loop in {name}: {type(exc).__name__}: {exc}"
        _log.critical(reason)
        self.modes.estop(reason)

    def _task_status(self) -> dict[str, Any]:
        out = {}
        for name, st in self.supervisor.status().items():
            out[name] = {
                "state": st.state,
                "restarts": st.restarts,
                "last_error": st.last_error,
            }
        return out


def _sensor_specs(config: Config) -> dict[str, Any]:
    """What the recorded observations are, for episode metadata."""
    camera, depth = config.frame_sensors()
    specs: dict[str, Any] = {}
    if camera is not None:
        c = camera
        specs["image"] = {"driver": c.driver, "width": c.width, "height": c.height, "fps": c.fps}
    if depth is not None:
        d = depth
        specs["depth"] = {
            "driver": d.driver,
            "width": d.width,
            "height": d.height,
            "fps": d.fps,
            "max_depth_m": d.max_depth_m,
        }
    return specs


def _joint_speeds(config: Config) -> dict[str, float]:
    act = config.hardware.actuators
    if isinstance(act, ArmActuatorsConfig):
        return {j.name: j.max_speed_deg_s for j in act.joints}
    return {}


def tune_process() -> None:
    """Process-wide settings that keep the control thread's wake-ups prompt.

    A thread waiting for the GIL gets it after at most the switch interval
    (5 ms by default); 1 ms bounds how long pure-Python work in a capture or
    network thread can delay a tick.  OpenCV is kept to one worker thread so
    image work (sim rendering, resizing) leaves the other cores to the loop.
    """
    sys.setswitchinterval(0.001)
    # Before any thread exists, so that every thread inherits it: only the e-stop line's
    # thread takes SIGUSR1 (brain/control/estop_line.py).
    estop_line.block()
    return_large_buffers_to_the_os()
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
