"""The web view in a real browser (Debian's chromium through Selenium)
against a real agent: real BPF, real uvicorn, real loopback traffic.

Set BPFSCOPE_WEB_FIGURES=docs/figures to save a screenshot of each pane.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_agent_live import agent

from agent_helpers import tcp_exchange

pytestmark = pytest.mark.kernel

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extras")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "needs Debian's chromium and chromium-driver (scripts/setup.sh)", allow_module_level=True
    )

REQUEST, RESPONSE = 123_457, 654_321
FIGURES = os.environ.get("BPFSCOPE_WEB_FIGURES")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="bpfscope-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,900", f"--user-data-dir={profile}",
        # no name lookups at all: the page only ever talks to 127.0.0.1
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium fetch a driver
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("web")
    names = tmp / "ip-map"
    names.write_text("127.0.0.0/8 this-host\n")  # a profiled name for the map and table
    with agent(tmp, "--syscalls", "--bpf-stats", "--ip-map", str(names)) as (url, _proc):
        yield url


def until(fn: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except Exception:  # the DOM changes under us while the page refreshes
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def severe_console(driver: Any) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def shot(driver: Any, name: str) -> None:
    if FIGURES:
        Path(FIGURES).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(FIGURES) / f"web-{name}.png"))


def tab(driver: Any, pane: str) -> None:
    driver.find_element(By.ID, f"tab-{pane}").click()
    until(lambda: driver.find_element(By.ID, f"pane-{pane}").is_displayed(), what=pane)


def set_filter(driver: Any, text: str) -> None:
    box = driver.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#filter-bar button[type=submit]").click()


def flow_rows(driver: Any) -> list[WebElement]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#flows-table tbody tr"))


def cell(row: WebElement, col: str) -> str:
    return str(row.find_element(By.CSS_SELECTOR, f"td[data-col={col}]").get_attribute("data-value"))


def test_panes_show_a_real_connection(live: str, browser: Any) -> None:
    d = browser
    d.get(live + "/")
    until(lambda: flow_rows(d), what="the first flows")
    assert severe_console(d) == [], "the page logged errors on load"
    assert "Content-Security-Policy" not in d.page_source  # CSP comes as a header, not a meta tag

    # Flows: the client side of a fresh loopback connection, with its exact bytes.
    started = time.monotonic()
    port, cport = tcp_exchange(REQUEST, RESPONSE)
    key = f"tcp|{os.getpid()}|127.0.0.1|{cport}|127.0.0.1|{port}"

    def mine() -> WebElement | None:
        rows = d.find_elements(By.CSS_SELECTOR, f'#flows-table tr[data-key="{key}"]')
        if rows and cell(rows[0], "rx_bytes") == str(RESPONSE):
            return rows[0]
        return None

    row = until(mine, timeout=10, what="the connection in the flows table")
    assert cell(row, "tx_bytes") == str(REQUEST)
    assert time.monotonic() - started < 10
    shot(d, "flows")
    everything = len(flow_rows(d))

    # A filter with the API's names narrows the table to this port.
    set_filter(d, f"port={port}")

    def narrowed() -> list[WebElement] | None:
        rows = flow_rows(d)
        ports = [(r.get_attribute("data-lport"), r.get_attribute("data-rport")) for r in rows]
        return rows if rows and all(str(port) in p for p in ports) else None

    rows = until(narrowed, what="the filtered table")
    assert len(rows) == 2 < everything  # client and server side, nothing else

    # Grouped by process (the API's group_by): both sides are this process,
    # one row of two connections with the exact bytes of both directions.
    Select(d.find_element(By.ID, "flows-group")).select_by_value("process")

    def grouped() -> list[WebElement] | None:
        rows = d.find_elements(By.CSS_SELECTOR, "#flows-table tbody tr[data-group]")
        ok = len(rows) == 1 and str(rows[0].get_attribute("data-group")).endswith(
            f"[{os.getpid()}]"
        )
        return rows if ok and cell(rows[0], "connections") == "2" else None

    (group,) = until(grouped, what="one group for both sides of the connection")
    assert cell(group, "tx_bytes") == str(REQUEST + RESPONSE)
    assert cell(group, "rx_bytes") == str(REQUEST + RESPONSE)
    Select(d.find_element(By.ID, "flows-group")).select_by_index(0)  # back to flows
    until(
        lambda: len(flow_rows(d)) == 2 and not d.find_elements(By.CSS_SELECTOR, "tr[data-group]"),
        what="flows again",
    )
    set_filter(d, "bogus=1")
    until(lambda: "use name=value" in d.find_element(By.ID, "filter-error").text, what="error")
    set_filter(d, "")

    # Map: an edge from this process to 127.0.0.1 carrying the port;
    # clicking it filters the flows table to that pair.
    tab(d, "map")

    def edge() -> WebElement | None:
        for e in d.find_elements(By.CSS_SELECTOR, "#map path.edge"):
            if e.get_attribute("data-pid") == str(os.getpid()) and str(port) in str(
                e.get_attribute("data-rports")
            ).split(","):
                return e
        return None

    found = until(edge, what="the map edge")
    assert found.get_attribute("data-remote") == "127.0.0.1"
    assert int(str(found.get_attribute("data-bytes"))) >= REQUEST + RESPONSE
    shot(d, "map")
    d.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", found)
    until(lambda: d.find_element(By.ID, "pane-flows").is_displayed(), what="flows after a click")
    assert d.find_element(By.ID, "filter").get_attribute("value") == (
        f"pid={os.getpid()} cidr=127.0.0.1/32"
    )
    until(
        lambda: (
            (rows := flow_rows(d))
            and all(r.get_attribute("data-pid") == str(os.getpid()) for r in rows)
            and any(r.get_attribute("data-key") == key for r in rows)
        ),
        what="the table filtered by the edge",
    )
    set_filter(d, "")

    # Connections: the open and the close of that connection, from the stream.
    tab(d, "conns")

    def events_of(p: int) -> set[str]:
        return {
            str(r.get_attribute("data-type"))
            for r in d.find_elements(By.CSS_SELECTOR, "#conns-table tbody tr")
            if str(p) in (r.get_attribute("data-lport"), r.get_attribute("data-rport"))
        }

    until(lambda: {"open", "close"} <= events_of(port), what="open and close events")
    shot(d, "connections")
    # Pause holds new events back; resume shows them.
    d.find_element(By.ID, "pause").click()
    port2, _ = tcp_exchange(1000, 1000)
    until(lambda: "new while paused" in d.find_element(By.ID, "conns-status").text, what="held")
    assert events_of(port2) == set()
    d.find_element(By.ID, "pause").click()
    until(lambda: {"open", "close"} <= events_of(port2), what="events after resume")

    # History: points once the 1 s buckets with this port are stored; both
    # sides of the connection sum to the exact bytes.
    tab(d, "history")
    set_filter(d, f"port={port}")

    def stored() -> int | None:
        pts = d.find_elements(By.CSS_SELECTOR, "#history-chart circle.point.tx")
        total = sum(int(str(p.get_attribute("data-value"))) for p in pts)
        return total if total == REQUEST + RESPONSE else None

    assert until(stored, timeout=15, what="history points") == REQUEST + RESPONSE
    set_filter(d, "")
    Select(d.find_element(By.ID, "range")).select_by_value("300")
    until(
        lambda: len(d.find_elements(By.CSS_SELECTOR, "#history-chart circle.point")) > 2,
        what="unfiltered history",
    )
    shot(d, "history")

    # Kernel: health, bpfscope's programs with run counts, syscalls.
    d.set_window_size(1400, 1400)  # the syscalls chart sits below the programs
    tab(d, "kernel")
    until(lambda: "healthy" in d.find_element(By.ID, "health-ok").text, what="health")
    until(lambda: d.find_elements(By.CSS_SELECTOR, "#programs-table tbody tr"), what="programs")
    until(lambda: d.find_elements(By.CSS_SELECTOR, "#syscalls-chart g.sysrow"), what="syscalls")
    shot(d, "kernel")
    d.set_window_size(1400, 900)
    assert severe_console(d) == []


def test_token_prompt_hides_all_data(tmp_path: Path, browser: Any) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with agent(tmp_path, "--token-file", str(token)) as (url, proc):
        d = browser
        d.get(url + "/")
        until(lambda: d.find_element(By.ID, "token-form").is_displayed(), what="the prompt")
        assert not d.find_element(By.ID, "main").is_displayed()
        time.sleep(1.5)  # a poll would have filled the tables by now
        assert flow_rows(d) == []
        assert d.find_elements(By.CSS_SELECTOR, "#conns-table tbody tr") == []
        shot(d, "token")

        box = d.find_element(By.ID, "token-input")
        box.send_keys("wrong")
        d.find_element(By.ID, "token-submit").click()
        until(lambda: "refused" in d.find_element(By.ID, "token-error").text, what="refusal")
        assert not d.find_element(By.ID, "main").is_displayed()

        box.clear()
        box.send_keys("s3cret-token")
        d.find_element(By.ID, "token-submit").click()
        until(lambda: flow_rows(d), what="flows once the token is given")
        assert not d.find_element(By.ID, "token-form").is_displayed()
        status = d.find_element(By.ID, "conns-status")  # hidden pane: .text is empty
        until(lambda: "live" in str(status.get_attribute("textContent")), what="the stream")
        time.sleep(1)  # its request is open by now

        # The open page holds an event stream; SIGTERM must not wait for it.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert time.monotonic() - started < 5
        assert "Traceback" not in str(proc.stderr.read() if proc.stderr else "")
        d.execute_script("sessionStorage.clear()")
