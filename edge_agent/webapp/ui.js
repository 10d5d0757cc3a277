// Small DOM helpers: text only (never innerHTML with what the robot sends), a toast, key/value lists.

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

let toastTimer = null;

/** A short message at the top; errors stay longer and are red. */
export function toast(message, { error = false, ms } = {}) {
  const box = $("toast");
  box.textContent = message;
  box.className = error ? "toast error" : "toast";
  box.dataset.kind = error ? "error" : "info";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    box.hidden = true;
  }, ms ?? (error ? 6000 : 2500));
}

export function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(3).replace(/\.?0+$/, "");
  if (Array.isArray(value)) return value.map(fmt).join(", ");
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

export function humanKey(key) {
  return key.replace(/_/g, " ");
}

/**
 * Fill a <dl> with rows: [key, value, cls?]. Rows whose value is undefined are skipped, so the
 * panels show whatever the robot's components report without knowing every field in advance.
 */
export function fillKv(dl, rows) {
  const frag = document.createDocumentFragment();
  for (const [key, value, cls] of rows) {
    if (value === undefined) continue;
    frag.append(el("dt", {}, humanKey(key)), el("dd", cls ? { class: cls } : {}, fmt(value)));
  }
  dl.replaceChildren(frag);
}

/** Rows for every scalar field of an object (nested objects flattened one level). */
export function scalarRows(obj, skip = []) {
  const rows = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (skip.includes(k)) continue;
    if (v && typeof v === "object" && !Array.isArray(v)) {
      for (const [k2, v2] of Object.entries(v)) {
        if (v2 === null || typeof v2 !== "object") rows.push([`${k} ${k2}`, v2]);
      }
    } else {
      rows.push([k, v]);
    }
  }
  return rows;
}

/** A button that needs a second tap within 3 s: no blocking confirm() dialogs on a phone. */
export function confirmTap(button, label, action) {
  let armedUntil = 0;
  const idle = button.textContent;
  button.addEventListener("click", () => {
    const now = Date.now();
    if (now > armedUntil) {
      armedUntil = now + 3000;
      button.textContent = label;
      button.classList.add("armed");
      setTimeout(() => {
        if (Date.now() >= armedUntil) {
          button.textContent = idle;
          button.classList.remove("armed");
        }
      }, 3050);
      return;
    }
    armedUntil = 0;
    button.textContent = idle;
    button.classList.remove("armed");
    action();
  });
}
