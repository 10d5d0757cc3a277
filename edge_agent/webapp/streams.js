// The two live links to the robot: teleop (commands out, telemetry in) and the camera.
// Both reconnect on their own with a growing pause, and both can be closed for good.

import { openSocket } from "./api.js";

const SEND_HZ = 25; // steady command rate while the stick is held (the robot's watchdog is 250 ms)

class ReconnectingSocket {
  constructor(path, { binaryType = "blob", onMessage, onState }) {
    this.path = path;
    this.binaryType = binaryType;
    this.onMessage = onMessage;
    this.onState = onState || (() => {});
    this.ws = null;
    this.wanted = false;
    this.backoff = 500;
    this.retry = null;
  }

  get open() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    if (this.wanted) return;
    this.wanted = true;
    this.#connect();
  }

  stop() {
    this.wanted = false;
    clearTimeout(this.retry);
    this.retry = null;
    if (this.ws) {
      this.ws.onclose = null;
      this.ws.close(1000, "bye");
      this.ws = null;
    }
    this.onState("closed");
  }

  send(obj) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(obj));
    return true;
  }

  #connect() {
    this.onState("connecting");
    const ws = openSocket(this.path);
    ws.binaryType = this.binaryType;
    this.ws = ws;
    ws.onopen = () => {
      this.backoff = 500;
      this.onState("open");
    };
    ws.onmessage = (ev) => this.onMessage(ev.data);
    ws.onerror = () => {}; // onclose follows and handles it
    ws.onclose = (ev) => {
      this.ws = null;
      if (!this.wanted) return;
      // 4401/4403: the robot refused our token; asking again will not help.
      if (ev.code === 4401 || ev.code === 4403) {
        this.wanted = false;
        this.onState("refused");
        return;
      }
      this.onState("down");
      this.retry = setTimeout(() => this.#connect(), this.backoff);
      this.backoff = Math.min(this.backoff * 2, 8000);
    };
  }
}

/**
 * Teleop: while the stick is held, the latest command goes out SEND_HZ times a second; on release
 * one zero command goes out and sending stops, so a frozen phone stops the car through the
 * robot's watchdog rather than through anything the phone still has to do.
 */
export class Teleop {
  constructor({ onTelemetry, onState, onError = () => {} }) {
    this.sock = new ReconnectingSocket("/teleop", {
      onMessage: (data) => this.#message(data),
      onState,
    });
    this.onTelemetry = onTelemetry;
    this.onError = onError;
    this.action = [0, 0];
    this.timer = null;
    this.sent = 0;
  }

  start() {
    this.sock.start();
  }

  stop() {
    this.command([0, 0], false);
    this.sock.stop();
  }

  get connected() {
    return this.sock.open;
  }

  /** The stick moved (active) or was let go (inactive). */
  command(action, active) {
    this.action = action.slice(0, 2);
    if (active) {
      if (!this.timer) {
        this.#send();
        this.timer = setInterval(() => this.#send(), 1000 / SEND_HZ);
      }
    } else {
      const wasActive = !!this.timer;
      clearInterval(this.timer);
      this.timer = null;
      this.action = [0, 0];
      if (wasActive) this.#send();
    }
  }

  estop() {
    this.command([0, 0], false);
    return this.sock.send({ type: "estop" });
  }

  #send() {
    if (this.sock.send({ type: "teleop", action: this.action })) this.sent += 1;
  }

  #message(data) {
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (!msg) return;
    if (msg.type === "telemetry") this.onTelemetry(msg);
    else if (msg.type === "error" && msg.error) this.onError(msg.error);
  }
}

/** Camera: JPEG frames over a WebSocket, decoded off the main thread and drawn on a canvas. */
export class CameraView {
  constructor(canvas, { onFrame, onState }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onFrame = onFrame || (() => {});
    this.frames = 0;
    this.dropped = 0;
    this.busy = false;
    this.sock = new ReconnectingSocket("/camera", {
      onMessage: (data) => this.#frame(data),
      onState,
    });
  }

  start() {
    this.sock.start();
  }

  stop() {
    this.sock.stop();
  }

  async #frame(data) {
    if (!(data instanceof Blob)) return; // text messages carry nothing we draw
    if (this.busy) {
      this.dropped += 1; // a slow phone shows fewer, fresher frames instead of a growing lag
      return;
    }
    this.busy = true;
    try {
      const bmp = await createImageBitmap(data);
      if (this.canvas.width !== bmp.width || this.canvas.height !== bmp.height) {
        this.canvas.width = bmp.width;
        this.canvas.height = bmp.height;
      }
      this.ctx.drawImage(bmp, 0, 0);
      bmp.close();
      this.frames += 1;
      this.canvas.dataset.frames = String(this.frames);
      this.onFrame(this.frames);
    } catch {
      this.dropped += 1; // a corrupt frame: skip it, the next one will do
    } finally {
      this.busy = false;
    }
  }
}
