// Reads the agent's /api with the bearer token, if one was given. A 401
// anywhere tells the app to forget what it shows and ask for the token.
const KEY = "bpfscope-token";
let token = sessionStorage.getItem(KEY) || "";
const onDenied = [];

export class Unauthorized extends Error {}
export class ApiError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function whenUnauthorized(fn) { onDenied.push(fn); }

export function setToken(value) {
  token = value;
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
}

function url(path, params) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== "") u.searchParams.set(k, String(v));
  }
  return u;
}

function headers(extra) {
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

function denied() {
  for (const fn of onDenied) fn();
  return new Unauthorized("this agent needs a token");
}

export async function get(path, params) {
  const r = await fetch(url(path, params), { headers: headers({}), cache: "no-store" });
  if (r.status === 401) throw denied();
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new ApiError(body.detail || `HTTP ${r.status}`, r.status, body);
  return body;
}

// Server-Sent Events over fetch: EventSource cannot send an Authorization
// header. Calls onEvent(type, data) per event until the stream ends or
// `signal` aborts.
export async function stream(path, params, onEvent, signal) {
  const r = await fetch(url(path, params), {
    headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal,
  });
  if (r.status === 401) throw denied();
  if (!r.ok) throw new ApiError(`HTTP ${r.status}`, r.status, null);
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let type = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (data) onEvent(type, JSON.parse(data));
    }
  }
}
