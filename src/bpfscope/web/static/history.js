// History pane: bytes per history bucket from /api/v1/history for the
// current filter, as an SVG line chart (sent and received).
import { get, ApiError } from "./api.js";
import { bytes, svg, clear } from "./fmt.js";

const LIMIT = 1000; // the API's page cap
const SERIES = [
  { key: "tx", label: "sent", cls: "tx" },
  { key: "rx", label: "received", cls: "rx" },
];

function buckets(rows) {
  const by = new Map();
  for (const r of rows) {
    const b = by.get(r.bucket_start) || { t: r.bucket_start, tx: 0, rx: 0 };
    b.tx += r.tx_bytes;
    b.rx += r.rx_bytes;
    by.set(r.bucket_start, b);
  }
  return [...by.values()].sort((a, b) => a.t - b.t);
}

function niceTicks(max, n) {
  const raw = max / n;
  const mag = 10 ** Math.floor(Math.log10(raw || 1));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [0];
  while (out[out.length - 1] < max) out.push(out[out.length - 1] + step); // top tick >= max
  return out;
}

export class HistoryPane {
  constructor(app) {
    this.app = app;
    this.interval = 5000;
    this.svg = document.getElementById("history-chart");
    this.status = document.getElementById("history-status");
    this.range = document.getElementById("range");
    this.range.addEventListener("change", () => app.refreshNow());
  }

  async refresh(filter) {
    const { family, ...rest } = filter; // history has no family filter
    const span = Number(this.range.value);
    const now = Date.now() / 1000;
    let body;
    try {
      body = await get("/api/v1/history", { ...rest, since: -span, limit: LIMIT });
    } catch (err) {
      if (err instanceof ApiError && err.status === 503) {
        clear(this.svg);
        this.status.textContent = err.message;
        return;
      }
      throw err;
    }
    const points = buckets(body.items);
    const notes = [`${points.length} buckets, ${body.count} stored rows`];
    if (body.count >= LIMIT) notes.push(`only the newest ${LIMIT} rows (narrow the filter for older buckets)`);
    if (family) notes.push("history has no family filter; it is ignored here");
    this.status.textContent = notes.join(" · ");
    this.draw(points, now - span, now);
  }

  draw(points, t0, t1) {
    const s = this.svg;
    clear(s);
    const width = Math.max(720, s.parentElement.clientWidth - 20);
    const height = 360;
    const m = { l: 80, r: 40, t: 20, b: 40 };
    s.setAttribute("width", width);
    s.setAttribute("height", height);
    s.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const max = Math.max(1, ...points.map((p) => Math.max(p.tx, p.rx)));
    const ticks = niceTicks(max, 4);
    const top = ticks[ticks.length - 1] || max;
    const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (width - m.l - m.r);
    const y = (v) => height - m.b - (v / top) * (height - m.t - m.b);
    for (const v of ticks) {
      s.append(svg("line", { class: "grid", x1: m.l, x2: width - m.r, y1: y(v), y2: y(v) }));
      s.append(svg("text", { class: "axis", x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, bytes(v)));
    }
    for (let i = 0; i <= 5; i += 1) {
      const t = t0 + ((t1 - t0) * i) / 5;
      const d = new Date(t * 1000);
      const label = t1 - t0 > 86400 ? d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false }) : d.toLocaleTimeString([], { hour12: false });
      s.append(svg("text", { class: "axis", x: x(t), y: height - m.b + 18, "text-anchor": "middle" }, label));
    }
    s.append(svg("text", { class: "axis", x: m.l, y: 12 }, "bytes per bucket"));
    if (!points.length) {
      s.append(svg("text", { class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle" }, "no stored buckets in this range yet"));
      return;
    }
    for (const ser of SERIES) {
      const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p[ser.key]).toFixed(1)}`).join(" ");
      s.append(svg("path", { class: `line ${ser.cls}`, d }));
      for (const p of points) {
        s.append(svg("circle", { class: `point ${ser.cls}`, cx: x(p.t), cy: y(p[ser.key]), r: 3, dataset: { t: p.t, value: p[ser.key], series: ser.key } },
          svg("title", {}, `${new Date(p.t * 1000).toLocaleString()}: ${bytes(p[ser.key])} ${ser.label}`)));
      }
    }
    let lx = width - m.r - 180;
    for (const ser of SERIES) {
      s.append(svg("rect", { class: `key ${ser.cls}`, x: lx, y: m.t - 10, width: 12, height: 4 }));
      s.append(svg("text", { class: "axis", x: lx + 16, y: m.t - 5 }, ser.label));
      lx += 90;
    }
  }

  clear() { clear(this.svg); this.status.textContent = ""; }
}
