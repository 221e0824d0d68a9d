"""Keyset paging of the history: pages neither repeat nor skip rows while
the agent writes; the CLI pages and draws series like the API."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from bpfscope.cli import cli
from bpfscope.errors import EXIT_USAGE, UserError
from bpfscope.flowquery import BadQuery
from bpfscope.store import FlowSample, HistoryQuery, HistoryReader, Store

T0 = int(time.time()) // 60 * 60 - 600  # whole minutes: series steps align


def sample(i: int, tx: int) -> FlowSample:
    return FlowSample(
        proto="tcp", family=4, laddr="10.0.0.1", lport=0, raddr=f"10.1.0.{i % 40}", rport=443,
        pid=100 + i, comm=f"p{i % 3}", container="", tx_bytes=tx, direction="active", new=True,
    )  # fmt: skip


def fill(store: Store, buckets: range, per_bucket: int = 30) -> None:
    for b in buckets:
        # equal sizes on purpose: ties must not make pages repeat or skip
        store.add([sample(i, 1000 + i % 4) for i in range(per_bucket)], now=T0 + 10 * b)
    store.flush()


def all_pages(read: Any, q: HistoryQuery, between: Any = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = read(q, cursor)
        out += page.items
        if page.next_cursor is None:
            return out
        cursor = page.next_cursor
        if between:
            between()


def ident(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["bucket_start"], r["pid"], r["raddr"])


@pytest.mark.parametrize("form", ["rows", "groups", "series"])
def test_pages_are_stable_while_the_agent_writes(tmp_path: Path, form: str) -> None:
    q = {
        "rows": HistoryQuery(limit=7),
        "groups": HistoryQuery(limit=7, group_by="remote"),
        "series": HistoryQuery(limit=3, step=10),
    }[form]
    with Store(tmp_path / "h.db", bucket_seconds=10) as store:
        fill(store, range(10))
        snapshot = store.query(HistoryQuery(**{**q.__dict__, "limit": 10_000}))
        written = iter(range(10, 1000))

        def write_more() -> None:  # newer buckets, and more bytes for every group
            fill(store, range(next(written), next(written) + 1))

        paged = all_pages(store.page, q, between=write_more)
    assert paged == snapshot
    if form == "rows":
        assert len({ident(r) for r in paged}) == len(paged) == 300


def test_reader_pages_while_a_writer_thread_writes(tmp_path: Path) -> None:
    path = tmp_path / "h.db"
    with Store(path, bucket_seconds=10) as store:
        fill(store, range(5))
        stop = threading.Event()

        def writer() -> None:
            b = 5
            while not stop.is_set():
                fill(store, range(b, b + 1))
                b += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            with HistoryReader(path) as reader:
                first = reader.page(HistoryQuery(limit=11))
                rows = all_pages(reader.page, HistoryQuery(limit=11))
        finally:
            stop.set()
            t.join()
    newest = first.items[0]["bucket_start"]
    pinned = [r for r in rows if r["bucket_start"] <= newest]
    assert len({ident(r) for r in rows}) == len(rows)  # no row twice
    # every bucket up to the first page's newest is complete: none skipped
    assert len(pinned) == 30 * ((newest - T0) // 10 + 1)


def test_cursors_are_checked(tmp_path: Path) -> None:
    with Store(tmp_path / "h.db", bucket_seconds=10) as store:
        fill(store, range(3))
        nxt = store.page(HistoryQuery(limit=5)).next_cursor
        assert nxt is not None
        for bad, q in (
            ("x", HistoryQuery()),
            ("eyJ1IjoxfQ", HistoryQuery()),  # {"u":1}
            (nxt, HistoryQuery(group_by="remote")),  # a rows cursor for groups
            (nxt, HistoryQuery(step=60)),
        ):
            with pytest.raises(BadQuery, match="invalid cursor"):
                store.page(q, bad)


def run(args: list[str]) -> Any:
    return CliRunner().invoke(cli, ["history", *args])


def test_cli_pages_with_cursor_and_draws_a_series(tmp_path: Path) -> None:
    db = tmp_path / "h.db"
    with Store(db, bucket_seconds=10) as store:
        fill(store, range(4))
    base = ["--db", str(db), "--since", "2h", "--json"]
    first = run([*base, "--limit", "100"])
    assert first.exit_code == 0, first.output
    assert len(first.stdout.splitlines()) == 100
    cursor = first.stderr.strip().removeprefix("more: --cursor ")
    rest = run([*base, "--limit", "100", "--cursor", cursor])
    assert rest.exit_code == 0, rest.output
    rows = [json.loads(x) for x in first.stdout.splitlines() + rest.stdout.splitlines()]
    assert len({ident(r) for r in rows}) == 120
    assert rest.stderr == ""  # the last page names no next one
    series = run([*base, "--step", "20", "--cidr", "10.1.0.5/32"])
    assert series.exit_code == 0, series.output
    points = [json.loads(x) for x in series.stdout.splitlines()]
    assert [p["tx_bytes"] for p in points] == [2 * 1001, 2 * 1001]  # pid 105 only
    table = run(["--db", str(db), "--since", "2h", "--step", "20", "--limit", "1"])
    assert table.exit_code == 0, table.output
    assert "more: --cursor" in table.stdout
    rows_table = run(["--db", str(db), "--since", "2h", "--limit", "1"])
    assert "10.0.0.1:*" in rows_table.stdout  # the client's ephemeral ports, summed


@pytest.mark.parametrize(
    "args", [["--cursor", "nonsense"], ["--step", "60", "-g", "remote"], ["--step", "0"]]
)
def test_cli_bad_paging_is_a_usage_error(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "h.db"
    with Store(db, bucket_seconds=10) as store:
        fill(store, range(1))
    out = CliRunner().invoke(cli, ["history", "--db", str(db), *args])
    if isinstance(out.exception, UserError):
        assert out.exception.exit_code == EXIT_USAGE
    else:
        assert out.exit_code == 2, out.output  # click's own usage error
