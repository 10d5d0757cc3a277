// The panels below the stick: recording, episodes, training, updates, health. Each refresh
// function fetches one resource and redraws its panel; app.js decides when to call them.

import * as api from "./api.js";
import { $, confirmTap, el, fillKv, fmt, scalarRows, toast } from "./ui.js";

/** A POST whose failure is shown to the user; resolves to the answer or null. */
export async function act(path, body, okMessage) {
  try {
    const answer = await api.post(path, body);
    if (okMessage) toast(okMessage);
    return answer;
  } catch (exc) {
    toast(exc.message, { error: true });
    return null;
  }
}

// ---------------------------------------------------------------------------------- recording

export function renderRecording(rec) {
  const btn = $("record-btn");
  const info = $("record-info");
  if (!rec) {
    btn.disabled = true;
    info.textContent = "recording is not available on this robot";
    return;
  }
  btn.disabled = false;
  btn.setAttribute("aria-pressed", String(!!rec.armed));
  btn.textContent = rec.armed ? "Stop recording" : "Record";
  if (rec.recording) info.textContent = `recording ${rec.episode_id} · ${rec.steps_written} steps written`;
  else if (rec.armed) info.textContent = "armed: episodes are written while the robot drives";
  else info.textContent = `off · ${rec.episodes_committed ?? 0} episodes this session`;
  if (rec.last_error && !rec.fault) info.textContent += ` · last error: ${rec.last_error}`;
  // The episode-writer process died and was restarted (its episode was recovered).
  const wp = rec.writer_process;
  if (wp && !wp.alive) info.textContent += " · episode writer down, restarting";
  else if (wp && wp.restarts) info.textContent += ` · episode writer restarted ${wp.restarts} time(s) (${wp.last_exit})`;
  // Recording stopped by itself (disk full, I/O error): shown until space is back or it restarts.
  const fault = $("record-fault");
  fault.hidden = !rec.fault;
  fault.textContent = rec.fault ? rec.fault.message : "";
}

export function onRecordToggle(refreshStatus) {
  $("record-btn").addEventListener("click", async () => {
    const armed = $("record-btn").getAttribute("aria-pressed") === "true";
    const done = await act(armed ? "/recording/stop" : "/recording/start", {}, armed ? "Recording stopped" : "Recording armed");
    await refreshStatus();
    if (done && armed) refreshEpisodes();
  });
}

// ---------------------------------------------------------------------------------- episodes

function episodeRow(ep) {
  const del = el("button", { type: "button", "aria-label": `Delete ${ep.episode_id}` }, "Delete");
  confirmTap(del, "Sure?", async () => {
    try {
      await api.del(`/episodes/${encodeURIComponent(ep.episode_id)}`);
      toast("Episode deleted");
    } catch (exc) {
      toast(exc.message, { error: true });
    }
    refreshEpisodes();
  });
  const bits = [
    ep.status,
    ep.num_steps != null ? `${ep.num_steps} steps` : null,
    ep.duration_s != null ? `${fmt(ep.duration_s)} s` : null,
    ep.mode,
    ep.exports && ep.exports.length ? `exported: ${ep.exports.join(", ")}` : null,
  ];
  return el(
    "li",
    { dataset: { id: ep.episode_id } },
    el("span", {}, el("span", {}, ep.episode_id), el("br"), el("span", { class: "meta" }, bits.filter(Boolean).join(" · "))),
    del,
  );
}

let shownEpisodes = "";

export async function refreshEpisodes() {
  try {
    const answer = await api.get("/episodes");
    const episodes = Array.isArray(answer) ? answer : answer.episodes || [];
    episodes.sort((a, b) => String(b.start_utc || b.episode_id).localeCompare(String(a.start_utc || a.episode_id)));
    // Redraw only on change, so a Delete tapped once stays armed across a poll.
    const key = JSON.stringify(episodes);
    if (key === shownEpisodes) return;
    shownEpisodes = key;
    $("episodes-count").textContent = `(${episodes.length})`;
    $("episodes-list").replaceChildren(...episodes.map(episodeRow));
    if (!episodes.length) $("episodes-list").append(el("li", { class: "meta" }, "no episodes yet"));
  } catch (exc) {
    if (exc.status === 401) return;
    shownEpisodes = "";
    $("episodes-list").replaceChildren(el("li", { class: "meta" }, `cannot list episodes: ${exc.message}`));
  }
}

$("episodes-refresh").addEventListener("click", refreshEpisodes);
$("episodes-export").addEventListener("click", async () => {
  toast("Exporting…");
  try {
    const r = await api.post("/episodes/export", { format: "rlds" }, { timeoutMs: 300000 });
    const n = r && (r.episodes ?? r.num_episodes);
    const count = n != null ? `: ${Array.isArray(n) ? n.length : n} episodes` : "";
    const where = r && r.out_dir ? ` in ${r.out_dir}` : "";
    toast(`Export done${count}${where}${r && r.up_to_date ? " (already up to date)" : ""}`, { ms: 5000 });
  } catch (exc) {
    toast(exc.message, { error: true });
  }
  refreshEpisodes();
});

// ---------------------------------------------------------------------------------- training

function progressOf(t) {
  if (typeof t.progress === "number") return t.progress;
  const total = t.steps ?? t.total_steps;
  if (typeof t.step === "number" && typeof total === "number" && total > 0) return t.step / total;
  return 0;
}

function duration(s) {
  if (typeof s !== "number") return undefined;
  const m = Math.floor(s / 60);
  return m ? `${m} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;
}

const TRAINING_BUSY = new Set(["starting", "running", "paused", "stopping", "promoting"]);

/** The local fine-tune (brain/localtrain): state, step of steps, loss, ETA, resources, outcome. */
function trainingRows(t) {
  const res = t.resource;
  const last = t.last_result;
  const gate = last && last.result && last.result.gate;
  const rows = [
    ["state", t.enabled === false ? "disabled in the configuration" : t.state, t.state === "failed" ? "bad" : undefined],
    ["step", typeof t.step === "number" ? `${t.step}${t.steps ? ` of ${t.steps}` : ""}` : undefined],
    ["loss", typeof t.loss === "number" ? t.loss.toFixed(4) : undefined],
    ["elapsed", duration(t.elapsed_s)],
    ["time left", duration(t.eta_s)],
    ["paused", t.paused ? `yes (resources; ${t.pauses} pauses)` : undefined, "warn"],
    ["resources", res ? [res.level, res.memory_percent != null ? `memory ${res.memory_percent} %` : null,
      res.temperature_c != null ? `${res.temperature_c} °C` : null].filter(Boolean).join(" · ") : undefined,
    res && res.level && res.level !== "NORMAL" ? "warn" : undefined],
    ["message", t.message ?? undefined],
    ["last run", last ? `${last.state}${last.error ? `: ${last.error}` : ""}` : undefined, last && last.error ? "bad" : undefined],
    ["gate", gate ? `${gate.accepted ? "accepted" : "rejected"}${gate.reasons && gate.reasons.length ? `: ${gate.reasons.join("; ")}` : ""}` : undefined],
    ["installed", last && last.promotion ? (last.promotion.installed ? "yes" : last.promotion.error || "no") : undefined],
  ];
  const known = ["available", "enabled", "state", "run_id", "run_dir", "pid", "step", "steps", "loss", "elapsed_s",
    "eta_s", "paused", "pauses", "resource", "message", "last_result"];
  return rows.concat(scalarRows(t, known).filter(([, v]) => v !== null));
}

let trainingState = null;

export async function refreshTraining() {
  try {
    const t = await api.get("/training");
    const available = t.available !== false;
    trainingState = t.state ?? null;
    $("training-progress").value = Math.max(0, Math.min(1, progressOf(t)));
    fillKv($("training-info"), available ? trainingRows(t) : [["state", "not available on this robot"]]);
    const busy = TRAINING_BUSY.has(String(t.state));
    $("training-start").disabled = !available || t.enabled === false || busy;
    $("training-start").textContent = t.state === "stopped" ? "Resume" : "Start";
    $("training-stop").disabled = !available || !busy || t.state === "stopping" || t.state === "promoting";
  } catch (exc) {
    if (exc.status !== 401) fillKv($("training-info"), [["error", exc.message, "bad"]]);
  }
}

$("training-start").addEventListener("click", () => {
  const resume = trainingState === "stopped";
  act("/training/start", resume ? { resume: true } : {}, resume ? "Training resumed" : "Training started").then(refreshTraining);
});
$("training-stop").addEventListener("click", () => act("/training/stop", {}, "Stopping training…").then(refreshTraining));

// ---------------------------------------------------------------------------------- updates

function slotText(rec) {
  if (!rec) return null;
  return `${rec.version} (slot ${rec.slot}${rec.source ? `, ${rec.source}` : ""})`;
}

/** The A/B updater's status (brain/ota): versions per slot, phase, last result; anything else as-is. */
function updateRows(u) {
  const known = ["available", "phase", "busy", "committed", "previous", "candidate", "last_result", "last_error",
    "trial_remaining_s", "failed_versions", "boot_notes", "health"];
  const rows = [
    ["phase", u.phase, u.phase === "rolled_back" || u.last_error ? "warn" : undefined],
    ["running", "committed" in u ? slotText(u.committed) ?? "factory image" : undefined],
    ["previous", "previous" in u ? slotText(u.previous) ?? "none" : undefined],
    ["candidate", u.candidate ? slotText(u.candidate) : undefined],
    ["trial left", u.trial_remaining_s != null ? `${u.trial_remaining_s} s` : undefined],
    ["last result", u.last_result ?? undefined],
    ["last error", u.last_error ?? undefined, "bad"],
    ["failed versions", Array.isArray(u.failed_versions) && u.failed_versions.length
      ? u.failed_versions.map((f) => f.version).join(", ") : undefined],
  ];
  return rows.concat(scalarRows(u, known));
}

export async function refreshUpdates() {
  try {
    const u = await api.get("/updates");
    const available = u.available !== false;
    fillKv($("update-info"), available ? updateRows(u) : [["state", "updates are not available on this robot"]]);
    for (const id of ["update-check", "update-file"]) $(id).disabled = !available || !!u.busy;
    $("update-rollback").disabled = !available || !!u.busy || ("previous" in u && !u.previous);
    $("update-upload").disabled = !available || !!u.busy || !$("update-file").files.length;
  } catch (exc) {
    if (exc.status !== 401) fillKv($("update-info"), [["error", exc.message, "bad"]]);
  }
}

$("update-check").addEventListener("click", async () => {
  toast("Checking for updates…");
  const r = await act("/updates/check", {}, null);
  if (r) toast(r.message || (r.installed ? `Installed ${r.version ?? "update"}` : "No newer update"));
  refreshUpdates();
});
confirmTap($("update-rollback"), "Tap again to roll back", async () => {
  await act("/updates/rollback", {}, "Rolled back to the previous version");
  refreshUpdates();
});
$("update-file").addEventListener("change", () => {
  $("update-upload").disabled = !$("update-file").files.length;
});
$("update-upload").addEventListener("click", async () => {
  const file = $("update-file").files[0];
  if (!file) return;
  $("update-upload").disabled = true;
  toast(`Uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`, { ms: 60000 });
  try {
    const r = await api.request("POST", "/updates/upload", file, { timeoutMs: 600000 });
    toast((r && r.message) || "Bundle installed");
    $("update-file").value = "";
  } catch (exc) {
    toast(exc.message, { error: true });
  }
  refreshUpdates();
});

// ---------------------------------------------------------------------------------- health

const LEVEL_CLASS = { ok: "ok", normal: "ok", warning: "warn", critical: "bad", emergency: "bad", unknown: undefined };

function checkText(check) {
  const details = Object.entries(check)
    .filter(([k, v]) => k !== "status" && k !== "path" && v !== null && typeof v !== "object")
    .map(([k, v]) => {
      if (k.endsWith("_percent")) return `${k.slice(0, -8).replace(/_/g, " ")} ${fmt(v)} %`;
      if (k === "celsius") return `${fmt(v)} °C`;
      return `${k.replace(/_/g, " ")} ${fmt(v)}`;
    });
  return details.length ? `${check.status} · ${details.join(" · ")}` : String(check.status);
}

/** GET /health (public): overall ok, versions, and one row per check (status plus its numbers). */
export async function refreshHealth() {
  try {
    const h = await api.get("/health");
    const rows = [
      ["overall", h.ok === undefined ? undefined : h.ok ? "ok" : "attention needed", h.ok ? "ok" : "bad"],
      ["robot", h.robot_id],
      ["software", h.software_version],
      ["API version", h.api_version],
    ];
    for (const [name, check] of Object.entries(h.checks || {})) {
      if (check && typeof check === "object") rows.push([name, checkText(check), LEVEL_CLASS[check.status]]);
    }
    rows.push(...scalarRows(h, ["ok", "robot_id", "software_version", "api_version", "checks", "mode"]));
    fillKv($("health-info"), rows);
  } catch (exc) {
    fillKv($("health-info"), [["robot", exc.message, "bad"]]);
  }
}
