// The web view's shell: tabs, the shared filter, the token prompt and the
// poll loop of the visible pane. Data comes only from this agent's /api.
import { get, setToken, whenUnauthorized, Unauthorized } from "./api.js";
import { parseFilter, formatFilter } from "./fmt.js";
import { FlowsPane } from "./flows.js";
import { MapPane } from "./map.js";
import { ConnsPane } from "./conns.js";
import { HistoryPane } from "./history.js";
import { KernelPane } from "./kernel.js";

const FILTERED = new Set(["flows", "map", "history"]);

class App {
  constructor() {
    this.filter = {};
    this.pane = "flows";
    this.timer = null;
    this.running = false;
    this.panes = {
      flows: new FlowsPane(this),
      map: new MapPane(this),
      conns: new ConnsPane(this),
      history: new HistoryPane(this),
      kernel: new KernelPane(this),
    };
    for (const b of document.querySelectorAll("#tabs button")) {
      b.addEventListener("click", () => this.show(b.dataset.pane));
    }
    this.filterInput = document.getElementById("filter");
    this.filterError = document.getElementById("filter-error");
    document.getElementById("filter-bar").addEventListener("submit", (ev) => {
      ev.preventDefault();
      try {
        this.setFilter(parseFilter(this.filterInput.value));
      } catch (err) {
        this.filterError.textContent = err.message;
      }
    });
    document.getElementById("filter-clear").addEventListener("click", () => this.setFilter({}));
    document.getElementById("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      setToken(document.getElementById("token-input").value.trim());
      this.start();
    });
    whenUnauthorized(() => this.lock());
    const hash = location.hash.slice(1);
    if (this.panes[hash]) this.pane = hash;
  }

  async start() {
    try {
      await get("/api/v1/health").catch((err) => {
        if (err instanceof Unauthorized) throw err;
      }); // anything but 401 means we may read
    } catch {
      return; // lock() has shown the prompt
    }
    document.getElementById("token-form").hidden = true;
    document.getElementById("main").hidden = false;
    this.running = true;
    this.show(this.pane);
    this.panes.conns.start();
  }

  // No (or a wrong) token: show the prompt and drop every piece of data.
  lock() {
    const wasRunning = this.running;
    this.running = false;
    clearTimeout(this.timer);
    for (const p of Object.values(this.panes)) p.clear();
    document.getElementById("main").hidden = true;
    document.getElementById("token-form").hidden = false;
    document.getElementById("token-error").textContent =
      wasRunning || sessionStorage.getItem("bpfscope-token") ? "That token was refused." : "";
    setToken("");
    document.getElementById("token-input").focus();
  }

  show(name) {
    this.pane = name;
    history.replaceState(null, "", `#${name}`);
    for (const [key, p] of Object.entries(this.panes)) {
      document.getElementById(`pane-${key}`).hidden = key !== name;
      document.getElementById(`tab-${key}`).classList.toggle("active", key === name);
      void p;
    }
    document.getElementById("filter-bar").hidden = !FILTERED.has(name);
    this.refreshNow();
  }

  setFilter(filter, pane) {
    this.filter = filter;
    this.filterInput.value = formatFilter(filter);
    this.filterError.textContent = "";
    if (pane) this.show(pane);
    else this.refreshNow();
  }

  async refreshNow() {
    clearTimeout(this.timer);
    if (!this.running) return;
    const pane = this.panes[this.pane];
    if (!pane.interval) return;
    const name = this.pane;
    const status = document.getElementById("status");
    try {
      await pane.refresh(this.filter);
      status.textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
      status.className = "";
      this.filterError.textContent = "";
    } catch (err) {
      if (err instanceof Unauthorized) return;
      // A bad filter is the user's to fix: say so next to it.
      if (FILTERED.has(name) && err.status >= 400 && err.status < 500) this.filterError.textContent = err.message;
      else { status.textContent = `error: ${err.message}`; status.className = "error"; }
    }
    if (this.running && this.pane === name) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.refreshNow(), pane.interval);
    }
  }
}

new App().start();
