// Continuon companion app: pairing, then one screen with camera, stick, mode, recording,
// episodes, training, updates and health. The e-stop button lives outside both screens.

import * as api from "./api.js";
import { GamepadInput, Joystick } from "./joystick.js";
import { CameraView, Teleop } from "./streams.js";
import {
  act,
  onRecordToggle,
  refreshEpisodes,
  refreshHealth,
  refreshTraining,
  refreshUpdates,
  renderRecording,
} from "./panels.js";
import { $, fmt, toast } from "./ui.js";

// Uncaught errors are counted where a test (or a curious user) can read them.
window.continuonErrors = [];
window.addEventListener("error", (e) => window.continuonErrors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => window.continuonErrors.push(String(e.reason)));

const state = { status: null, mode: null, estopReason: null, pollers: [], started: false };

// ---------------------------------------------------------------------------------- e-stop

let lastEstop = 0;

async function pressEstop() {
  const now = Date.now();
  if (now - lastEstop < 600) return; // pointerdown and the click that follows it are one press
  lastEstop = now;
  joystick.release();
  gamepad.stop();
  $("estop").classList.add("latched");
  const viaSocket = teleop.estop(); // the fastest path, if the link is up
  if (!api.getToken()) {
    toast("Not paired: this device cannot stop the robot. Use the robot's own stop.", { error: true });
    return;
  }
  try {
    await api.post("/estop", { reason: "companion app e-stop button" });
    toast("E-STOP latched");
  } catch (exc) {
    toast(viaSocket ? "E-stop sent over the live link" : `E-stop failed: ${exc.message}`, { error: !viaSocket });
  }
  refreshStatus();
}

$("toast").addEventListener("click", () => {
  $("toast").hidden = true;
});
$("estop").addEventListener("pointerdown", pressEstop);
$("estop").addEventListener("click", pressEstop);
window.addEventListener("keydown", (e) => {
  if (e.key === "Escape") pressEstop();
});

// ---------------------------------------------------------------------------------- driving

// The stick sends [steering, throttle]: a car. Other robots (the arm) need one value per joint,
// so the stick stays inert there rather than sending commands the robot would refuse.
const canDrive = () => !state.status || !state.status.robot_kind || state.status.robot_kind === "car";

function onStick(action, active) {
  $("knob").dataset.active = String(active);
  if (canDrive() || !active) teleop.command(action, active);
}

const joystick = new Joystick($("joystick"), $("knob"), onStick);
const gamepad = new GamepadInput({
  onChange: (action, active) => {
    if (!joystick.active && (canDrive() || !active)) teleop.command(action, active);
  },
  onEstop: pressEstop,
  onConnection: (id) => {
    $("gamepad-status").textContent = id ? `gamepad: ${id.slice(0, 40)}` : "no gamepad";
  },
});

let lastLinkError = { text: "", at: 0 };

const teleop = new Teleop({
  onTelemetry: renderTelemetry,
  onError: (err) => {
    // The robot answers a refused message every time it gets one: say it once, not 25 times a second.
    const now = Date.now();
    if (err.message !== lastLinkError.text || now - lastLinkError.at > 5000) toast(err.message, { error: true });
    lastLinkError = { text: err.message, at: now };
  },
  onState: (s) => {
    const link = $("link");
    link.textContent = s === "open" ? "online" : s === "refused" ? "refused" : s === "closed" ? "offline" : "reconnecting";
    link.classList.toggle("up", s === "open");
    if (s === "refused") window.dispatchEvent(new CustomEvent(api.UNAUTHORIZED_EVENT));
    updateDriveHint();
  },
});

const camera = new CameraView($("camera"), {
  onFrame: (n) => {
    cameraFps.frames += 1;
    $("camera-info").dataset.frames = String(n);
  },
  onState: (s) => {
    if (s !== "open") $("camera-info").textContent = s === "closed" ? "video off" : "no video";
  },
});
const cameraFps = { frames: 0, last: performance.now() };
setInterval(() => {
  const now = performance.now();
  const fps = (cameraFps.frames * 1000) / (now - cameraFps.last);
  cameraFps.frames = 0;
  cameraFps.last = now;
  if (camera.frames) $("camera-info").textContent = `${fps.toFixed(0)} fps · frame ${camera.frames}`;
}, 1000);

function updateDriveHint() {
  let hint = "";
  if (!canDrive()) hint = `The stick drives cars; this robot is a ${state.status.robot_kind}.`;
  else if (!teleop.connected) hint = "No live link to the robot.";
  else if (state.mode === "estop") hint = "E-stop latched: reset, then choose Manual.";
  else if (state.mode === "autonomous" && state.deadmanHolding)
    hint = "Stopped: no operator heartbeat reaches the robot (supervised autonomy).";
  else if (state.mode && state.mode !== "manual") hint = "Choose Manual to drive.";
  $("drive-hint").textContent = hint;
}

function renderTelemetry(t) {
  if (t.mode) setMode(t.mode, t.estop_reason);
  if (typeof t.deadman_holding === "boolean" && t.deadman_holding !== state.deadmanHolding) {
    state.deadmanHolding = t.deadman_holding;
    updateDriveHint();
  }
  const a = Array.isArray(t.action) ? t.action : [0, 0];
  $("steer-out").textContent = Number(a[0] ?? 0).toFixed(2);
  $("throttle-out").textContent = Number(a[1] ?? 0).toFixed(2);
  const sim = t.sim || {};
  $("speed-out").textContent = sim.speed_mps == null ? "–" : `${sim.speed_mps.toFixed(2)} m/s`;
  $("cte-out").textContent = sim.cte_m == null ? "–" : `${sim.cte_m.toFixed(2)} m${sim.on_track === false ? " (off)" : ""}`;
  $("laps-out").textContent = sim.laps == null ? "–" : fmt(sim.laps);
  if (typeof t.recording === "boolean") $("record-btn").dataset.writing = String(t.recording);
}

// ---------------------------------------------------------------------------------- supervised autonomy

// While this page is open (and visible) in AUTONOMOUS, tell the robot an operator is watching.
// With safety.autonomous_heartbeat_s set, the car holds neutral when these stop arriving: a
// closed app, a lost link or a flooded network stops it instead of leaving it unsupervised.
let lastBeat = 0;
function sendHeartbeat() {
  const period = state.status?.deadman?.heartbeat_s;
  if (!period || state.mode !== "autonomous" || document.hidden) return;
  const now = performance.now();
  if (now - lastBeat < (period * 1000) / 4) return; // four per window: one lost beat is no stop
  lastBeat = now;
  api.post("/heartbeat", {}, { timeoutMs: Math.max(250, period * 1000) }).catch(() => {});
}
setInterval(sendHeartbeat, 250);

// ---------------------------------------------------------------------------------- mode and status

function setMode(mode, estopReason) {
  $("estop").classList.toggle("latched", mode === "estop");
  if (mode === state.mode && (estopReason ?? null) === state.estopReason) return; // telemetry repeats
  state.mode = mode;
  state.estopReason = estopReason ?? null;
  const badge = $("mode-badge");
  badge.textContent = mode;
  badge.className = `badge ${mode}`;
  for (const b of document.querySelectorAll("#mode-switch button")) {
    b.classList.toggle("current", b.dataset.mode === mode);
    b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
  }
  $("estop-banner").hidden = mode !== "estop";
  $("estop-reason").textContent = estopReason || "";
  updateDriveHint();
}

async function refreshStatus() {
  try {
    const s = await api.get("/status");
    state.status = s;
    $("robot-id").textContent = s.robot_id || "robot";
    setMode(s.mode, s.estop_reason);
    renderRecording(s.recording);
    updateDriveHint();
  } catch (exc) {
    if (exc.status !== 401) $("link").textContent = "offline";
  }
}

for (const b of document.querySelectorAll("#mode-switch button")) {
  b.addEventListener("click", () =>
    act(`/mode`, { mode: b.dataset.mode }, `Mode: ${b.dataset.mode}`).then(refreshStatus),
  );
}
$("reset-btn").addEventListener("click", () => act("/reset", {}, "E-stop reset: robot is idle").then(refreshStatus));

onRecordToggle(refreshStatus);

// ---------------------------------------------------------------------------------- screens

/** Run `fn` now and then every `ms` while the page is visible; never two at once. */
function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (document.visibilityState === "visible") {
      try {
        await fn();
      } catch (exc) {
        console.warn("refresh failed", exc); // a panel keeps its last content; the next tick retries
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function showMain() {
  $("pair-screen").hidden = true;
  $("main-screen").hidden = false;
  $("token-id").textContent = localStorage.getItem("continuon.token_id") || "this device";
  if (state.started) return;
  state.started = true;
  teleop.start();
  if (document.visibilityState === "visible") camera.start();
  state.pollers = [
    every(2000, refreshStatus),
    every(3000, refreshTraining),
    every(10000, refreshUpdates),
    every(5000, refreshHealth),
    every(15000, refreshEpisodes),
  ];
}

function showPair(message = "") {
  stopMain();
  $("main-screen").hidden = true;
  $("pair-screen").hidden = false;
  $("pair-error").textContent = message;
  $("pair-code").focus();
  // Health is public: show which robot this page belongs to before trusting it with a code.
  api
    .get("/health", { auth: false })
    .then((h) => {
      $("pair-robot").textContent = `Robot ${h.robot_id} · software ${h.software_version ?? "?"}`;
    })
    .catch((exc) => {
      $("pair-robot").textContent = `The robot does not answer: ${exc.message}`;
    });
}

function stopMain() {
  if (!state.started) return;
  state.started = false;
  joystick.release();
  gamepad.stop();
  teleop.stop();
  camera.stop();
  for (const stop of state.pollers) stop();
  state.pollers = [];
}

$("pair-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const code = $("pair-code").value.replace(/\D/g, "");
  if (code.length !== 12) {
    $("pair-error").textContent = "The pairing code has 12 digits.";
    return;
  }
  $("pair-submit").disabled = true;
  $("pair-error").textContent = "";
  try {
    await api.pair(code, $("pair-name").value.trim() || defaultName());
    $("pair-code").value = "";
    showMain();
  } catch (exc) {
    $("pair-error").textContent = exc.message;
  } finally {
    $("pair-submit").disabled = false;
  }
});

function defaultName() {
  const ua = navigator.userAgent;
  const m = ua.match(/\(([^;)]+)/);
  return `browser (${m ? m[1] : "unknown"})`.slice(0, 64);
}

$("unpair").addEventListener("click", () => {
  api.clearToken();
  showPair("This device forgot the robot. Revoke its token on the robot with `continuon tokens revoke`.");
});

window.addEventListener(api.UNAUTHORIZED_EVENT, () => {
  if (!state.started) return;
  api.clearToken();
  showPair("The robot no longer accepts this device. Pair again with a new code.");
});

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "hidden") {
    joystick.release(); // a hidden page must not keep driving
    gamepad.stop();
    camera.stop();
  } else if (state.started) {
    camera.start();
  }
});
window.addEventListener("pagehide", () => joystick.release());

if (api.getToken()) showMain();
else showPair();
