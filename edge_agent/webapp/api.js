// The Robot API from the phone: JSON over fetch with the owner token, WebSockets with the
// token as a subprotocol. Every failure becomes an ApiError whose message is fit to show.

const TOKEN_KEY = "continuon.token";
const TOKEN_ID_KEY = "continuon.token_id";
const BASE = "/api/v1";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function getToken() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(token, tokenId) {
  localStorage.setItem(TOKEN_KEY, token);
  if (tokenId) localStorage.setItem(TOKEN_ID_KEY, tokenId);
}

export function clearToken() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(TOKEN_ID_KEY);
}

// Fired on window when the robot no longer accepts our token (revoked, or a new robot):
// the app goes back to the pairing screen instead of failing every request one by one.
export const UNAUTHORIZED_EVENT = "continuon:unauthorized";

function isBinary(body) {
  return body instanceof Blob || body instanceof ArrayBuffer || ArrayBuffer.isView(body);
}

/**
 * One API call. `body` is sent as JSON, or as octet-stream when it is a Blob/File/buffer.
 * Resolves to the parsed JSON answer (null when empty); rejects with ApiError.
 */
export async function request(method, path, body = undefined, { timeoutMs = 10000, auth = true } = {}) {
  const headers = {};
  const token = getToken();
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    if (isBinary(body)) {
      headers["Content-Type"] = "application/octet-stream";
      payload = body;
    } else {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
  }
  const abort = new AbortController();
  const timer = timeoutMs ? setTimeout(() => abort.abort(), timeoutMs) : null;
  let res;
  try {
    res = await fetch(BASE + path, { method, headers, body: payload, signal: abort.signal, cache: "no-store" });
  } catch (exc) {
    const msg = exc.name === "AbortError" ? "the robot did not answer in time" : "cannot reach the robot";
    throw new ApiError(0, "network", msg);
  } finally {
    if (timer) clearTimeout(timer);
  }
  let text = "";
  try {
    text = await res.text();
  } catch {
    throw new ApiError(0, "network", "the connection to the robot broke");
  }
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data && data.error;
    const message = (err && err.message) || `${res.status} ${res.statusText || "error"}`;
    const apiErr = new ApiError(res.status, (err && err.code) || `http_${res.status}`, message);
    if (res.status === 401 && auth) window.dispatchEvent(new CustomEvent(UNAUTHORIZED_EVENT, { detail: apiErr }));
    throw apiErr;
  }
  return data;
}

export const get = (path, opts) => request("GET", path, undefined, opts);
export const post = (path, body = {}, opts) => request("POST", path, body, opts);
export const del = (path, opts) => request("DELETE", path, undefined, opts);

/** A WebSocket to the API; the token travels as the second subprotocol (browsers cannot set headers). */
export function openSocket(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["continuon.v1"];
  const token = getToken();
  if (token) protocols.push(`bearer.${token}`);
  return new WebSocket(`${scheme}//${location.host}${BASE}${path}`, protocols);
}

/** Trade the 12-digit code shown by `continuon pair` for an owner token, and keep it. */
export async function pair(code, name) {
  const answer = await request("POST", "/pair", { code, name }, { auth: false });
  if (!answer || typeof answer.token !== "string") throw new ApiError(500, "bad_answer", "the robot sent no token");
  setToken(answer.token, answer.token_id);
  return answer;
}
