"""The web view's assets: served from the package under a strict CSP,
with no inline script, nothing from outside, no token needed for the page
itself (its API calls need it). test_build_artifacts checks the wheel ships them."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent_helpers import FakeFlows, make_flow, serve_in_thread
from bpfscope.agent import Agent
from bpfscope.server import create_app

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "src" / "bpfscope" / "web" / "static"
TOKEN = "unit-token"


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    agent = Agent(flows=FakeFlows([make_flow(i) for i in range(10)]), interval=0.05)
    with agent:
        deadline = time.monotonic() + 5
        while agent.state.polls < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        app = create_app(agent, token=TOKEN)
        with serve_in_thread(app) as url, httpx.Client(base_url=url) as c:
            yield c


def test_page_needs_no_token_but_its_data_does(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "default-src 'none'" in csp
    assert "unsafe" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/v1/flows").status_code == 401
    authed = client.get("/api/v1/flows", headers={"Authorization": f"Bearer {TOKEN}"})
    assert authed.status_code == 200
    assert authed.json()["total"] == 10


def test_every_referenced_asset_is_served_with_the_policy(client: httpx.Client) -> None:
    html = client.get("/").text
    refs = set(re.findall(r'(?:src|href)="(/ui/[^"]+)"', html))
    for js in STATIC.glob("*.js"):
        refs |= {f"/ui/{m}" for m in re.findall(r'from "\./([^"]+)"', js.read_text())}
    assert {"/ui/app.js", "/ui/style.css", "/ui/flows.js", "/ui/api.js"} <= refs
    for ref in refs:
        r = client.get(ref)
        assert r.status_code == 200, ref
        assert "script-src 'self'" in r.headers["content-security-policy"]
    assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")


def test_no_inline_script_or_style_and_nothing_from_outside() -> None:
    html = (STATIC / "index.html").read_text()
    for tag in re.findall(r"<script\b[^>]*>", html):
        assert 'src="/ui/' in tag, tag
    assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None  # no script body
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers
    for f in STATIC.iterdir():
        text = f.read_text()
        urls = set(re.findall(r"https?://[^\s\"')]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{f.name} refers outside the agent: {urls}"
        assert "innerHTML" not in text, f.name
        assert "eval(" not in text, f.name


@pytest.mark.parametrize(
    "path", ["/ui/missing.js", "/ui/..%2fserver.py", "/ui/%2e%2e%2f__init__.py", "/ui/index.html"]
)
def test_only_plain_asset_names_are_served(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 404


def test_open_event_stream_does_not_hold_up_shutdown() -> None:
    # Every open page holds an event stream; uvicorn waits for open responses
    # on shutdown, so `serve` sets app.state.stopping first (serve_cli).
    agent = Agent(flows=FakeFlows([make_flow(1)]), interval=0.05)
    app = create_app(agent)
    lines: list[str] = []
    with agent, serve_in_thread(app) as url:

        def read() -> None:
            stream = httpx.stream("GET", url + "/api/v1/connections/stream", timeout=30)
            with contextlib.suppress(httpx.HTTPError), stream as r:
                lines.extend(r.iter_lines())

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.5)
        app.state.stopping.set()
        reader.join(timeout=5)
        assert not reader.is_alive(), "the stream did not end"
    assert lines[0].startswith(": bpfscope event stream")
