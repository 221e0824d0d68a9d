// Kernel pane: the agent's health (collectors, rungs, drops, evictions,
// map fill, store), its own BPF programs with run time, and syscalls when
// the agent counts them.
import { get, ApiError } from "./api.js";
import { duration, el, svg, clear, header } from "./fmt.js";

const PROGRAM_COLUMNS = [
  { key: "collector", label: "Collector" },
  { key: "hook", label: "Hook" },
  { key: "rung", label: "Rung" },
  { key: "program", label: "Program" },
  { key: "id", label: "ID", num: true },
  { key: "run_cnt", label: "Runs", num: true },
  { key: "run_time", label: "Run time", num: true },
  { key: "avg", label: "Avg / run", num: true },
];

function kv(pairs) {
  const dl = el("dl");
  for (const [k, v] of pairs) dl.append(el("dt", {}, k), el("dd", {}, v));
  return dl;
}

export class KernelPane {
  constructor(app) {
    this.app = app;
    this.interval = 2000;
    this.health = document.getElementById("health");
    this.programs = document.getElementById("programs-table");
    this.programsNote = document.getElementById("programs-note");
    this.sysNote = document.getElementById("syscalls-note");
    this.sysChart = document.getElementById("syscalls-chart");
    header(this.programs, PROGRAM_COLUMNS);
  }

  async refresh() {
    let health;
    try {
      health = await get("/api/v1/health");
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 503)) throw err;
      health = err.body; // a dead collector: the body still says which
    }
    this.drawHealth(health);
    const progs = await get("/api/v1/programs");
    this.drawPrograms(progs);
    if (health.collectors.syscalls) {
      this.drawSyscalls(await get("/api/v1/syscalls", { by: "syscall", limit: 15 }));
    } else {
      clear(this.sysChart);
      this.sysNote.textContent = "The syscall collector is off (start the agent with --syscalls).";
    }
  }

  drawHealth(h) {
    clear(this.health);
    this.health.append(el("p", { class: h.ok ? "ok" : "error", id: "health-ok" },
      h.ok ? `healthy · up ${duration(h.uptime_seconds)}` : "a collector has stopped"));
    for (const [name, c] of Object.entries(h.collectors)) {
      const pairs = [["alive", c.alive ? "yes" : `no: ${c.error || "?"}`], ["polls", c.polls], ["last poll", duration(c.poll_seconds)]];
      for (const k of ["events_dropped", "events_skipped", "flows_evicted", "update_failures", "flows_tracked"]) {
        if (c[k] !== undefined) pairs.push([k.replace("_", " "), c[k]]);
      }
      if (c.map_fill !== undefined) pairs.push(["map fill", `${(c.map_fill * 100).toFixed(2)} %`]);
      if (c.tcp_accounting) pairs.push(["tcp accounting", c.tcp_accounting]);
      const rungs = Object.entries(c.rungs || {}).map(([k, v]) => `${k}=${v || "off"}`).join(", ");
      pairs.push(["rungs", rungs || "none"]);
      this.health.append(el("div", { class: "card", dataset: { collector: name } }, el("h3", {}, `${name} collector`), kv(pairs)));
    }
    const st = h.store || {};
    const spairs = [["ok", st.ok ? "yes" : `no: ${st.error || "?"}`]];
    if (st.rows !== undefined) spairs.push(["rows", st.rows], ["bucket", `${st.bucket_seconds} s`], ["queued buckets", st.queued_buckets]);
    this.health.append(el("div", { class: "card" }, el("h3", {}, "history store"), kv(spairs)));
  }

  drawPrograms(body) {
    this.programsNote.textContent = body.bpf_stats
      ? "Run counts and time from the kernel's BPF stats (on with --bpf-stats)."
      : "The kernel's BPF run-time stats are off: start the agent with --bpf-stats to see runs and time.";
    const tbody = this.programs.tBodies[0];
    clear(tbody);
    for (const p of body.items) {
      const cells = [p.collector, p.hook, p.rung, p.program, p.id, p.run_cnt,
        p.run_time_ns ? duration(p.run_time_ns / 1e9) : "", p.avg_ns ? `${p.avg_ns.toFixed(0)} ns` : ""];
      const row = el("tr", { dataset: { program: p.program } });
      cells.forEach((v, i) => row.append(el("td", { class: PROGRAM_COLUMNS[i].num ? "num" : null }, v)));
      tbody.append(row);
    }
  }

  drawSyscalls(body) {
    const s = this.sysChart;
    clear(s);
    const drops = Object.entries(body.drops || {}).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`);
    this.sysNote.textContent = `${body.mechanism || ""} · interval ${duration(body.interval_s)}` +
      (drops.length ? ` · drops: ${drops.join(", ")}` : " · no drops");
    const items = body.items || [];
    const rowH = 22;
    const width = Math.max(720, s.parentElement.clientWidth - 20);
    s.setAttribute("width", width);
    s.setAttribute("height", items.length * rowH + 10);
    const max = Math.max(1, ...items.map((i) => i.count));
    const bar = width - 360;
    items.forEach((it, i) => {
      const y = 5 + i * rowH;
      const w = (it.count / max) * bar;
      const ew = (it.errors / max) * bar;
      s.append(svg("g", { class: "sysrow", dataset: { syscall: it.syscall } },
        svg("text", { x: 140, y: y + 14, "text-anchor": "end" }, it.syscall),
        svg("rect", { class: "calls", x: 150, y, width: Math.max(1, w), height: rowH - 6 }),
        svg("rect", { class: "errors", x: 150, y, width: ew, height: rowH - 6 }),
        svg("text", { x: 156 + w, y: y + 14 }, `${it.count} calls${it.errors ? `, ${it.errors} errors` : ""}`)));
    });
  }

  clear() {
    clear(this.health);
    clear(this.programs.tBodies[0]);
    clear(this.sysChart);
    this.sysNote.textContent = "";
    this.programsNote.textContent = "";
  }
}
