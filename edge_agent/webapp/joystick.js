// Two sources of [steering, throttle] in [-1, 1]: an on-screen stick (touch, pen or mouse through
// Pointer Events) and a gamepad (Gamepad API). Stick right = steering +1 (full right, as the
// PCA9685 driver maps it), stick up = throttle +1 (forward).

const DEADZONE = 0.06;

function clampUnit(x, y) {
  const r = Math.hypot(x, y);
  return r > 1 ? [x / r, y / r] : [x, y];
}

function shape(v) {
  // A small dead zone around the centre so a resting thumb sends exact zeros.
  if (Math.abs(v) < DEADZONE) return 0;
  const s = (Math.abs(v) - DEADZONE) / (1 - DEADZONE);
  return Math.round(Math.sign(v) * Math.min(1, s) * 1000) / 1000;
}

/** The on-screen stick. `onChange(action, active)` fires on every move and once on release. */
export class Joystick {
  constructor(pad, knob, onChange) {
    this.pad = pad;
    this.knob = knob;
    this.onChange = onChange;
    this.pointerId = null;
    this.value = [0, 0];
    pad.addEventListener("pointerdown", (e) => this.#down(e));
    pad.addEventListener("pointermove", (e) => this.#move(e));
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      pad.addEventListener(type, (e) => this.#up(e));
    }
    // Keep the page from scrolling or zooming under the thumb.
    pad.addEventListener("touchstart", (e) => e.preventDefault(), { passive: false });
    pad.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  get active() {
    return this.pointerId !== null;
  }

  #down(e) {
    if (this.pointerId !== null) return;
    this.pointerId = e.pointerId;
    try {
      this.pad.setPointerCapture(e.pointerId);
    } catch {
      // synthetic or already-ended pointers cannot be captured; moves still arrive on the pad
    }
    this.pad.classList.add("active");
    this.#move(e);
    e.preventDefault();
  }

  #move(e) {
    if (e.pointerId !== this.pointerId) return;
    const rect = this.pad.getBoundingClientRect();
    const radius = rect.width / 2;
    const dx = (e.clientX - (rect.left + radius)) / radius;
    const dy = (e.clientY - (rect.top + rect.height / 2)) / radius;
    const [x, y] = clampUnit(dx, dy);
    this.#draw(x, y);
    this.value = [shape(x), shape(-y)];
    this.onChange(this.value, true);
  }

  #up(e) {
    if (e.pointerId !== this.pointerId) return;
    this.release();
  }

  /** Back to centre and tell the listener (also used when the page is hidden or the e-stop pressed). */
  release() {
    const was = this.pointerId;
    this.pointerId = null;
    this.pad.classList.remove("active");
    if (was !== null) {
      try {
        this.pad.releasePointerCapture(was);
      } catch {
        // already released
      }
    }
    this.#draw(0, 0);
    this.value = [0, 0];
    this.onChange(this.value, false);
  }

  #draw(x, y) {
    this.knob.style.transform = `translate(${(x * 50).toFixed(1)}%, ${(y * 50).toFixed(1)}%)`;
  }
}

/**
 * The first connected gamepad, polled: left stick X steers; right trigger drives, left trigger
 * reverses (falls back to the left stick's Y on pads without analogue triggers). Button B/circle
 * (standard mapping index 1) is the e-stop.
 */
export class GamepadInput {
  constructor({ onChange, onEstop, onConnection }) {
    this.onChange = onChange;
    this.onEstop = onEstop;
    this.onConnection = onConnection;
    this.active = false;
    this.estopHeld = false;
    this.timer = null;
    window.addEventListener("gamepadconnected", () => this.#update());
    window.addEventListener("gamepaddisconnected", () => this.#update());
    this.#update();
  }

  #pad() {
    const pads = navigator.getGamepads ? navigator.getGamepads() : [];
    for (const p of pads) if (p && p.connected) return p;
    return null;
  }

  #update() {
    const pad = this.#pad();
    this.onConnection(pad ? pad.id : null);
    if (pad && !this.timer) this.timer = setInterval(() => this.#poll(), 1000 / 30);
    if (!pad && this.timer) {
      clearInterval(this.timer);
      this.timer = null;
      this.stop();
    }
  }

  #poll() {
    const pad = this.#pad();
    if (!pad) return this.#update();
    const b = pad.buttons;
    const estop = !!(b[1] && b[1].pressed);
    if (estop && !this.estopHeld) this.onEstop();
    this.estopHeld = estop;
    const steer = shape(pad.axes[0] || 0);
    let throttle;
    if (pad.mapping === "standard" && b[6] && b[7]) throttle = shape(b[7].value - b[6].value);
    else throttle = shape(-(pad.axes[1] || 0));
    const moving = steer !== 0 || throttle !== 0;
    if (moving) {
      this.active = true;
      this.onChange([steer, throttle], true);
    } else if (this.active) {
      this.stop();
    }
  }

  stop() {
    if (!this.active) return;
    this.active = false;
    this.onChange([0, 0], false);
  }
}
