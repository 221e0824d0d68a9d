// Connections pane: the agent's lifecycle events, live from the SSE
// endpoint. Pause freezes the view; events keep arriving and are shown on
// resume, so a pause loses nothing the agent still holds.
import { get, stream, Unauthorized } from "./api.js";
import { bytes, endpoint, duration, clock, peer, el, clear, header } from "./fmt.js";

const KEEP = 500;
const COLUMNS = [
  { key: "time", label: "Time", text: (e) => clock(e.time) },
  { key: "type", label: "Event", text: (e) => e.type.replace("_", " ") },
  { key: "pid", label: "PID", num: true, text: (e) => e.pid },
  { key: "comm", label: "Process", text: (e) => e.comm },
  { key: "local", label: "Local", text: (e) => endpoint(e.laddr, e.lport) },
  { key: "remote", label: "Remote", text: (e) => endpoint(e.raddr, e.rport) },
  { key: "peer", label: "Peer", text: (e) => peer(e.remote_profile, e.raddr).name },
  { key: "direction", label: "Direction", text: (e) => e.direction || "" },
  { key: "state", label: "State", text: (e) => (e.oldstate ? `${e.oldstate} → ${e.newstate}` : "") },
  { key: "duration", label: "Duration", num: true, text: (e) => duration(e.duration) },
  { key: "tx", label: "Sent", num: true, text: (e) => bytes(e.tx_bytes) },
  { key: "rx", label: "Received", num: true, text: (e) => bytes(e.rx_bytes) },
  { key: "retrans", label: "Retrans", num: true, text: (e) => e.retransmits ?? "" },
];

export class ConnsPane {
  constructor(app) {
    this.app = app;
    this.interval = null; // pushed, not polled
    this.table = document.getElementById("conns-table");
    this.status = document.getElementById("conns-status");
    this.button = document.getElementById("pause");
    this.button.addEventListener("click", () => this.togglePause());
    header(this.table, COLUMNS);
    this.paused = false;
    this.pending = [];
    this.lastSeq = 0;
    this.received = 0;
    this.controller = null;
  }

  async start() {
    this.stop();
    const controller = new AbortController();
    this.controller = controller;
    try {
      const backlog = await get("/api/v1/connections", { limit: 200 });
      for (const e of backlog.items) this.add(e);
      this.lastSeq = Math.max(this.lastSeq, backlog.last_seq);
    } catch (err) {
      if (err instanceof Unauthorized) return;
      this.status.textContent = `error: ${err.message}`;
    }
    while (!controller.signal.aborted) {
      try {
        this.showStatus("live");
        await stream("/api/v1/connections/stream", { after: this.lastSeq }, (_type, e) => this.add(e), controller.signal);
      } catch (err) {
        if (controller.signal.aborted || err instanceof Unauthorized) return;
        this.showStatus(`stream lost (${err.message}); reconnecting`);
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
  }

  add(e) {
    if (e.seq <= this.lastSeq && this.received > 0) return;
    this.lastSeq = Math.max(this.lastSeq, e.seq);
    this.received += 1;
    if (this.paused) {
      this.pending.push(e);
      if (this.pending.length > 5000) this.pending.shift();
      this.showStatus("paused");
      return;
    }
    this.render([e]);
  }

  render(events) {
    const tbody = this.table.tBodies[0];
    for (const e of events) {
      const row = el("tr", { class: `ev-${e.type}`, dataset: { seq: e.seq, type: e.type, pid: e.pid, lport: e.lport, rport: e.rport } });
      for (const c of COLUMNS) row.append(el("td", { class: c.num ? "num" : null, dataset: { col: c.key } }, c.text(e)));
      tbody.prepend(row);
    }
    while (tbody.rows.length > KEEP) tbody.lastChild.remove();
    this.showStatus(this.paused ? "paused" : "live");
  }

  togglePause() {
    this.paused = !this.paused;
    this.button.textContent = this.paused ? "Resume" : "Pause";
    this.button.classList.toggle("active", this.paused);
    if (!this.paused) {
      const held = this.pending;
      this.pending = [];
      this.render(held);
    }
    this.showStatus(this.paused ? "paused" : "live");
  }

  showStatus(mode) {
    const extra = this.pending.length ? ` · ${this.pending.length} new while paused` : "";
    this.status.textContent = `${mode} · ${this.received} events since the page opened (newest first, last ${KEEP} kept)${extra}`;
  }

  clear() {
    this.stop();
    clear(this.table.tBodies[0]);
    this.pending = [];
    this.received = 0;
    this.lastSeq = 0;
    this.status.textContent = "";
  }
}
