// Formatting and small DOM helpers shared by the panes. Text goes in with
// textContent only, so nothing from the kernel is ever parsed as HTML.
const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

export function bytes(n) {
  if (n === null || n === undefined) return "";
  let v = Number(n);
  let i = 0;
  while (Math.abs(v) >= 1024 && i < UNITS.length - 1) { v /= 1024; i += 1; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${UNITS[i]}`;
}

export function rate(n) { return n ? `${bytes(Math.round(n))}/s` : ""; }

export function endpoint(addr, port) {
  if (addr === null || addr === undefined) return "?";
  return addr.includes(":") ? `[${addr}]:${port}` : `${addr}:${port}`;
}

export function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 1e-3) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(1)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function clock(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString([], { hour12: false }) + `.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function peer(profile, addr) {
  if (!profile) return { name: addr || "?", cls: "unknown" };
  return { name: profile.name || addr || "?", cls: profile.class || "unknown" };
}

export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

export function clear(node) { while (node.firstChild) node.firstChild.remove(); }

// One table header row; `sortable` columns call onSort(column).
export function header(table, columns, sort, onSort) {
  const head = table.tHead;
  clear(head);
  const row = el("tr");
  for (const c of columns) {
    const th = el("th", { class: [c.num ? "num" : "", c.sort ? "sortable" : ""].join(" ").trim(), dataset: { col: c.key } }, c.label);
    if (c.sort && sort && sort.key === c.sort) th.append(sort.desc ? " ▼" : " ▲");
    if (c.sort && onSort) th.addEventListener("click", () => onSort(c));
    row.append(th);
  }
  head.append(row);
}

// The API's filter names (docs/agent.md); the filter box takes `name=value`.
export const FILTERS = ["pid", "comm", "port", "cidr", "container", "family", "protocol"];

export function parseFilter(text) {
  const params = {};
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const eq = word.indexOf("=");
    const name = eq > 0 ? word.slice(0, eq) : "";
    const value = word.slice(eq + 1);
    if (!FILTERS.includes(name) || !value) {
      throw new Error(`"${word}": use name=value with a name from ${FILTERS.join(", ")}`);
    }
    params[name] = value;
  }
  return params;
}

export function formatFilter(params) {
  return FILTERS.filter((k) => params[k] !== undefined).map((k) => `${k}=${params[k]}`).join(" ");
}
