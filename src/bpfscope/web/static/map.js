// Map pane: who talks to whom. Local processes/containers on the left,
// remote peers (profiled name and class) on the right, one line per pair
// weighted by bytes. Clicking a line filters the flows table to it.
import { get } from "./api.js";
import { bytes, peer, svg, el, clear } from "./fmt.js";

const MAX_EDGES = 40;
const CLASSES = ["loopback", "private", "link_local", "public", "multicast", "unspecified", "unknown"];

function aggregate(flows) {
  const locals = new Map();
  const remotes = new Map();
  const edges = new Map();
  for (const f of flows) {
    const total = f.tx_bytes + f.rx_bytes;
    const lk = f.container ? `container:${f.container}` : `pid:${f.pid}`;
    const rk = f.raddr ?? "?";
    const p = peer(f.remote_profile, f.raddr);
    if (!locals.has(lk)) locals.set(lk, { key: lk, label: f.container ? f.container : `${f.comm} [${f.pid}]`, container: f.container, pid: f.pid, bytes: 0 });
    if (!remotes.has(rk)) remotes.set(rk, { key: rk, label: p.name === rk ? rk : `${p.name} (${rk})`, cls: p.cls, addr: f.raddr, bytes: 0 });
    locals.get(lk).bytes += total;
    remotes.get(rk).bytes += total;
    const ek = `${lk}|${rk}`;
    if (!edges.has(ek)) edges.set(ek, { local: lk, remote: rk, bytes: 0, tx: 0, rx: 0, rports: new Set(), flows: 0 });
    const e = edges.get(ek);
    e.bytes += total; e.tx += f.tx_bytes; e.rx += f.rx_bytes; e.flows += 1;
    if (f.rport) e.rports.add(f.rport);
  }
  const top = [...edges.values()].sort((a, b) => b.bytes - a.bytes).slice(0, MAX_EDGES);
  const used = (m, side) => [...new Set(top.map((e) => e[side]))].map((k) => m.get(k)).sort((a, b) => b.bytes - a.bytes);
  return { edges: top, locals: used(locals, "local"), remotes: used(remotes, "remote"), total: edges.size };
}

export class MapPane {
  constructor(app) {
    this.app = app;
    this.interval = 2000;
    this.svg = document.getElementById("map");
    const legend = document.getElementById("map-legend");
    for (const c of CLASSES) legend.append(el("span", { class: `swatch class-${c}` }, c.replace("_", " ")));
  }

  async refresh(filter) {
    const body = await get("/api/v1/flows", { ...filter, sort: "bytes", limit: 1000 });
    this.draw(aggregate(body.items));
  }

  draw({ edges, locals, remotes, total }) {
    const s = this.svg;
    clear(s);
    const width = Math.max(720, s.parentElement.clientWidth - 20);
    const rowH = 30;
    const height = Math.max(locals.length, remotes.length, 1) * rowH + 50;
    s.setAttribute("width", width);
    s.setAttribute("height", height);
    s.setAttribute("viewBox", `0 0 ${width} ${height}`);
    if (!edges.length) {
      s.append(svg("text", { x: 20, y: 30, class: "empty" }, "no flows match"));
      return;
    }
    const lx = 260;
    const rx = width - 300;
    const ly = new Map(locals.map((n, i) => [n.key, 40 + i * rowH]));
    const ry = new Map(remotes.map((n, i) => [n.key, 40 + i * rowH]));
    s.append(svg("text", { x: lx, y: 18, class: "heading", "text-anchor": "end" }, "processes / containers"));
    s.append(svg("text", { x: rx, y: 18, class: "heading" }, total > edges.length ? `remote peers (top ${edges.length} of ${total} pairs)` : "remote peers"));
    const max = Math.max(...edges.map((e) => e.bytes), 1);
    const edgeLayer = svg("g", { class: "edges" });
    for (const e of edges) {
      const y1 = ly.get(e.local);
      const y2 = ry.get(e.remote);
      const mid = (lx + rx) / 2;
      const w = 1.5 + 10 * Math.sqrt(e.bytes / max); // area-like: small pairs stay thin
      const local = locals.find((n) => n.key === e.local);
      const remote = remotes.find((n) => n.key === e.remote);
      const path = svg("path", {
        class: `edge class-${remote.cls}`,
        d: `M${lx + 8},${y1} C${mid},${y1} ${mid},${y2} ${rx - 8},${y2}`,
        "stroke-width": w.toFixed(1),
        dataset: {
          local: e.local, remote: e.remote, bytes: e.bytes,
          pid: local.container ? "" : local.pid, container: local.container || "",
          rports: [...e.rports].sort((a, b) => a - b).join(","),
        },
      }, svg("title", {}, `${local.label} ⇄ ${remote.label}: ${bytes(e.tx)} sent, ${bytes(e.rx)} received in ${e.flows} flow(s); remote ports ${[...e.rports].slice(0, 12).join(", ")}`));
      path.addEventListener("click", () => {
        const f = local.container ? { container: local.container } : { pid: local.pid };
        if (remote.addr) f.cidr = remote.addr.includes(":") ? `${remote.addr}/128` : `${remote.addr}/32`;
        this.app.setFilter(f, "flows");
      });
      edgeLayer.append(path);
    }
    s.append(edgeLayer);
    for (const n of locals) {
      const y = ly.get(n.key);
      s.append(svg("g", { class: "node local", dataset: { key: n.key } },
        svg("circle", { cx: lx, cy: y, r: 6 }),
        svg("text", { x: lx - 12, y: y + 4, "text-anchor": "end" }, `${n.label}  ${bytes(n.bytes)}`)));
    }
    for (const n of remotes) {
      const y = ry.get(n.key);
      s.append(svg("g", { class: `node remote class-${n.cls}`, dataset: { key: n.key } },
        svg("circle", { cx: rx, cy: y, r: 6 }),
        svg("text", { x: rx + 12, y: y + 4 }, `${n.label} · ${n.cls}  ${bytes(n.bytes)}`)));
    }
  }

  clear() { clear(this.svg); }
}
