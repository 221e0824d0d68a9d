// Flows pane: /api/v1/flows with the filter, sorted by the API.
import { get } from "./api.js";
import { bytes, rate, endpoint, duration, peer, el, clear, header } from "./fmt.js";

const COLUMNS = [
  { key: "pid", label: "PID", sort: "pid", num: true, text: (f) => f.pid },
  { key: "comm", label: "Process", sort: "comm", text: (f) => f.comm },
  { key: "container", label: "Container", text: (f) => f.container || "" },
  { key: "proto", label: "Proto", text: (f) => f.proto },
  { key: "local", label: "Local", text: (f) => endpoint(f.laddr, f.lport) },
  { key: "remote", label: "Remote", text: (f) => endpoint(f.raddr, f.rport) },
  { key: "peer", label: "Peer", text: (f) => peer(f.remote_profile, f.raddr).name, cls: (f) => `class-${peer(f.remote_profile, f.raddr).cls}` },
  { key: "state", label: "State", text: (f) => f.state || "" },
  { key: "tx_bytes", label: "Sent", sort: "tx", num: true, value: (f) => f.tx_bytes, text: (f) => bytes(f.tx_bytes) },
  { key: "rx_bytes", label: "Received", sort: "rx", num: true, value: (f) => f.rx_bytes, text: (f) => bytes(f.rx_bytes) },
  { key: "tx_rate", label: "Sent/s", sort: "tx_rate", num: true, value: (f) => f.tx_rate, text: (f) => rate(f.tx_rate) },
  { key: "rx_rate", label: "Recv/s", sort: "rx_rate", num: true, value: (f) => f.rx_rate, text: (f) => rate(f.rx_rate) },
  { key: "retransmits", label: "Retrans", sort: "retransmits", num: true, text: (f) => (f.proto === "tcp" ? f.retransmits : "") },
  { key: "resets", label: "Resets", sort: "resets", num: true, value: (f) => f.resets_sent + f.resets_received, text: (f) => (f.proto === "tcp" ? f.resets_sent + f.resets_received : "") },
  { key: "age", label: "Age", sort: "age", num: true, text: (f) => duration(Math.max(0, (f.closed || Date.now() / 1000) - (f.opened || f.first_seen))) },
];

// One row per group (the API's group_by): what the flows of a group sum to.
const GROUP_COLUMNS = [
  { key: "key", label: "Group", text: (g) => g.key },
  { key: "connections", label: "Connections", sort: "connections", num: true, value: (g) => g.connections, text: (g) => g.connections },
  { key: "tx_bytes", label: "Sent", sort: "tx", num: true, value: (g) => g.tx_bytes, text: (g) => bytes(g.tx_bytes) },
  { key: "rx_bytes", label: "Received", sort: "rx", num: true, value: (g) => g.rx_bytes, text: (g) => bytes(g.rx_bytes) },
  { key: "tx_rate", label: "Sent/s", sort: "tx_rate", num: true, value: (g) => g.tx_rate, text: (g) => rate(g.tx_rate) },
  { key: "rx_rate", label: "Recv/s", sort: "rx_rate", num: true, value: (g) => g.rx_rate, text: (g) => rate(g.rx_rate) },
];
// Sort keys the API accepts for groups.
const GROUP_SORTS = ["bytes", "tx", "rx", "rate", "tx_rate", "rx_rate", "connections"];

export function flowKey(f) {
  return [f.proto, f.pid, f.laddr, f.lport, f.raddr, f.rport].join("|");
}

export class FlowsPane {
  constructor(app) {
    this.app = app;
    this.interval = 1000;
    this.sort = { key: "bytes", desc: true };
    this.table = document.getElementById("flows-table");
    this.count = document.getElementById("flows-count");
    this.limit = document.getElementById("flows-limit");
    this.limit.addEventListener("change", () => app.refreshNow());
    this.group = document.getElementById("flows-group");
    this.group.addEventListener("change", () => {
      if (this.group.value && !GROUP_SORTS.includes(this.sort.key)) this.sort = { key: "bytes", desc: true };
      this.drawHeader();
      app.refreshNow();
    });
    this.drawHeader();
  }

  columns() { return this.group.value ? GROUP_COLUMNS : COLUMNS; }

  drawHeader() {
    header(this.table, this.columns(), this.sort, (c) => {
      this.sort = { key: c.sort, desc: this.sort.key === c.sort ? !this.sort.desc : true };
      this.drawHeader();
      this.app.refreshNow();
    });
  }

  async refresh(filter) {
    const by = this.group.value;
    const body = await get("/api/v1/flows", {
      ...filter, sort: this.sort.key, order: this.sort.desc ? "desc" : "asc", limit: this.limit.value,
      ...(by ? { group_by: by } : {}),
    });
    const tbody = this.table.tBodies[0];
    clear(tbody);
    if (by) {
      for (const g of body.items) {
        const row = el("tr", { dataset: { group: g.key } });
        for (const c of GROUP_COLUMNS) {
          const v = c.value ? c.value(g) : undefined;
          row.append(el("td", {
            class: c.num ? "num" : null,
            dataset: { col: c.key, ...(v !== undefined ? { value: v } : {}) },
          }, String(c.text(g))));
        }
        tbody.append(row);
      }
      this.count.textContent = `${body.items.length} of ${body.total} groups by ${by}`;
      return;
    }
    for (const f of body.items) {
      const row = el("tr", { dataset: { key: flowKey(f), pid: f.pid, lport: f.lport, rport: f.rport ?? "" } });
      for (const c of COLUMNS) {
        const v = c.value ? c.value(f) : undefined;
        row.append(el("td", {
          class: [c.num ? "num" : "", c.cls ? c.cls(f) : ""].join(" ").trim() || null,
          title: v !== undefined ? String(v) : null,
          dataset: { col: c.key, ...(v !== undefined ? { value: v } : {}) },
        }, c.text(f)));
      }
      tbody.append(row);
    }
    this.count.textContent = `${body.items.length} of ${body.total} flows`;
  }

  clear() { clear(this.table.tBodies[0]); this.count.textContent = ""; }
}
