"""Embedded flow history: SQLite in WAL mode, one row per flow per bucket.

The agent hands the store per-interval deltas; the store sums them into the
open bucket in memory and, when the bucket closes, a writer thread commits
the whole bucket in one transaction. So writes never slow the collectors,
and a SIGKILL loses at most the bucket that was still open. Retention by age
and by size runs after writes. Schema versions are migrated forward in
order; a corrupt or unwritable file raises ``StoreError`` with a message the
agent shows while it keeps serving live data.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from .flowquery import register_sql
from .historyquery import HOUR, HistoryPage, HistoryQuery, query_history, query_page

__all__ = [
    "DEFAULT_PATH",
    "ROW_COLUMNS",
    "SCHEMA_VERSION",
    "FlowSample",
    "HistoryPage",
    "HistoryQuery",
    "HistoryReader",
    "Store",
    "StoreError",
    "default_path",
    "query_history",
]

log = logging.getLogger("bpfscope.store")

DEFAULT_PATH: Final = Path("/var/lib/bpfscope/history.db")


def default_path() -> Path:
    """``$BPFSCOPE_DB``, else /var/lib/bpfscope (root) or the XDG data dir."""
    env = os.environ.get("BPFSCOPE_DB")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return DEFAULT_PATH
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bpfscope" / "history.db"


class StoreError(RuntimeError):
    """The history file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class FlowSample:
    """Traffic of one history key during one collection interval (deltas).

    The key is (proto, laddr, lport, raddr, rport, pid); the history sink
    stores the client's ephemeral port as 0 (see ``sinks.history_key``), so
    the connections of one client to one service share a key. ``conn``
    names the connection itself (to count distinct ones), ``new`` says the
    connection was first seen now, ``closed`` that it closed now.
    """

    proto: str
    family: int
    laddr: str
    lport: int
    raddr: str
    rport: int
    pid: int
    comm: str
    container: str
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_calls: int = 0
    rx_calls: int = 0
    retransmits: int = 0
    resets: int = 0
    remote_class: str = ""
    remote_name: str = ""
    # TCP on the counters path: data segments each way, retransmitted bytes
    tx_segs: int = 0
    rx_segs: int = 0
    retrans_bytes: int = 0
    direction: str = ""  # active (we connected) | passive (we accepted) | "" unknown
    conn: int = 0  # identity of the connection (0: the key is the connection)
    new: bool = False
    closed: bool = False
    duration_ms: int | None = None  # of a connection that closed, if its open was seen
    rtt_us: int | None = None  # smoothed RTT at this poll (TCP)

    def key(self) -> tuple[Any, ...]:
        return (self.proto, self.laddr, self.lport, self.raddr, self.rport, self.pid)


_COUNTERS: Final = (
    "tx_bytes",
    "rx_bytes",
    "tx_calls",
    "rx_calls",
    "retransmits",
    "resets",
    "tx_segs",
    "rx_segs",
    "retrans_bytes",
)

# Each step takes the schema from version i to i+1. Never edit a released
# step; add a new one.
MIGRATIONS: Final[tuple[str, ...]] = (
    # 1: buckets of per-flow counters
    """
    CREATE TABLE flow_buckets (
        bucket_start INTEGER NOT NULL,
        bucket_seconds INTEGER NOT NULL,
        proto TEXT NOT NULL,
        family INTEGER NOT NULL,
        laddr TEXT NOT NULL,
        lport INTEGER NOT NULL,
        raddr TEXT NOT NULL,
        rport INTEGER NOT NULL,
        pid INTEGER NOT NULL,
        comm TEXT NOT NULL,
        container TEXT NOT NULL,
        tx_bytes INTEGER NOT NULL DEFAULT 0,
        rx_bytes INTEGER NOT NULL DEFAULT 0,
        tx_calls INTEGER NOT NULL DEFAULT 0,
        rx_calls INTEGER NOT NULL DEFAULT 0,
        retransmits INTEGER NOT NULL DEFAULT 0,
        resets INTEGER NOT NULL DEFAULT 0,
        UNIQUE (bucket_start, proto, laddr, lport, raddr, rport, pid)
    );
    CREATE INDEX flow_buckets_time ON flow_buckets (bucket_start);
    """,
    # 2: IP profiling of the remote end, and lookups by remote and container
    """
    ALTER TABLE flow_buckets ADD COLUMN remote_class TEXT NOT NULL DEFAULT '';
    ALTER TABLE flow_buckets ADD COLUMN remote_name TEXT NOT NULL DEFAULT '';
    CREATE INDEX flow_buckets_remote ON flow_buckets (raddr, bucket_start);
    CREATE INDEX flow_buckets_container ON flow_buckets (container, bucket_start);
    """,
    # 3: TCP volume from the kernel's socket counters: segments, not calls
    """
    ALTER TABLE flow_buckets ADD COLUMN tx_segs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE flow_buckets ADD COLUMN rx_segs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE flow_buckets ADD COLUMN retrans_bytes INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: one row per (process, local address, remote address, service port):
    # the client's ephemeral port is stored as 0. Connection counts, closes,
    # durations and RTT per row; rows of older versions count as one
    # connection each. flow_hours: the same rows summed per hour, for long
    # ranges. An index by process for one flow's series.
    """
    ALTER TABLE flow_buckets ADD COLUMN direction TEXT NOT NULL DEFAULT '';
    ALTER TABLE flow_buckets ADD COLUMN connections INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE flow_buckets ADD COLUMN opened INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE flow_buckets ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE flow_buckets ADD COLUMN durations INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE flow_buckets ADD COLUMN duration_ms_sum INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE flow_buckets ADD COLUMN duration_ms_max INTEGER;
    ALTER TABLE flow_buckets ADD COLUMN rtt_min_us INTEGER;
    ALTER TABLE flow_buckets ADD COLUMN rtt_avg_us INTEGER;
    ALTER TABLE flow_buckets ADD COLUMN rtt_max_us INTEGER;
    ALTER TABLE flow_buckets ADD COLUMN rtt_samples INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX flow_buckets_pid ON flow_buckets (pid, bucket_start);
    CREATE TABLE flow_hours AS SELECT * FROM flow_buckets WHERE 0;
    CREATE UNIQUE INDEX flow_hours_key
        ON flow_hours (bucket_start, proto, laddr, lport, raddr, rport, pid);
    CREATE INDEX flow_hours_pid ON flow_hours (pid, bucket_start);
    CREATE INDEX flow_hours_remote ON flow_hours (raddr, bucket_start);
    INSERT INTO flow_hours SELECT
        bucket_start - bucket_start % 3600, 3600, proto, max(family), laddr, lport, raddr,
        rport, pid, max(comm), max(container), sum(tx_bytes), sum(rx_bytes), sum(tx_calls),
        sum(rx_calls), sum(retransmits), sum(resets), max(remote_class), max(remote_name),
        sum(tx_segs), sum(rx_segs), sum(retrans_bytes), '', sum(connections), sum(opened),
        0, 0, 0, NULL, NULL, NULL, NULL, 0
        FROM flow_buckets
        GROUP BY bucket_start - bucket_start % 3600, proto, laddr, lport, raddr, rport, pid;
    """,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# The row columns the writer fills besides bucket_start and bucket_seconds.
ROW_COLUMNS: Final = (
    "proto", "family", "laddr", "lport", "raddr", "rport", "pid", "comm", "container",
    *_COUNTERS, "remote_class", "remote_name", "direction", "connections", "opened",
    "closed", "durations", "duration_ms_sum", "duration_ms_max",
    "rtt_min_us", "rtt_avg_us", "rtt_max_us", "rtt_samples",
)  # fmt: skip
_KEY_COLUMNS: Final = "bucket_start, proto, laddr, lport, raddr, rport, pid"


def _merge(c: str) -> str:
    """How a row already stored for a key absorbs another one for it."""
    if c in _COUNTERS or c in ("connections", "opened", "closed", "durations",
                               "duration_ms_sum", "rtt_samples"):  # fmt: skip
        return f"{c} = {c} + excluded.{c}"
    if c in ("rtt_min_us", "duration_ms_max", "rtt_max_us"):
        f = "min" if c == "rtt_min_us" else "max"
        return f"{c} = {f}(coalesce({c}, excluded.{c}), coalesce(excluded.{c}, {c}))"
    if c == "rtt_avg_us":
        return (
            "rtt_avg_us = (coalesce(rtt_avg_us, 0) * rtt_samples + coalesce(excluded.rtt_avg_us, 0)"
            " * excluded.rtt_samples) / nullif(rtt_samples + excluded.rtt_samples, 0)"
        )
    if c == "remote_name":
        return (
            "remote_name = CASE excluded.remote_name WHEN '' THEN remote_name "
            "ELSE excluded.remote_name END"
        )
    return f"{c} = excluded.{c}"


def upsert_sql(table: str) -> str:
    """INSERT of (bucket_start, bucket_seconds, *ROW_COLUMNS) into a table
    of rows, summing into the row already there for the key."""
    cols = ", ".join(ROW_COLUMNS)
    marks = ", ".join("?" for _ in range(len(ROW_COLUMNS) + 2))
    updates = ", ".join(_merge(c) for c in ROW_COLUMNS if c not in _KEY_COLUMNS)
    return (
        f"INSERT INTO {table} (bucket_start, bucket_seconds, {cols}) VALUES ({marks}) "
        f"ON CONFLICT ({_KEY_COLUMNS}) DO UPDATE SET {updates}"
    )


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=5.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable across process crashes (SIGKILL); only
    # an OS crash can lose the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file to SCHEMA_VERSION; return the version it had."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"history schema version {version} is newer than this bpfscope "
            f"understands ({SCHEMA_VERSION}); upgrade bpfscope or use another --db"
        )
    if version == 0:
        # Only a fresh file can switch auto_vacuum; size retention relies on it.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("VACUUM")
    for step in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={step + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return version


class Store:
    """Bucketed flow history with a background writer."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bucket_seconds: int = 10,
        retention_seconds: float = 7 * 86400,
        max_bytes: int = 512 * 1024 * 1024,
        clock: Any = time.time,
    ) -> None:
        if bucket_seconds <= 0:
            raise ValueError("bucket length must be positive")
        self.path = Path(path)
        self.bucket_seconds = bucket_seconds
        self.retention_seconds = retention_seconds
        self.max_bytes = max_bytes
        self._clock = clock
        self._open_bucket: int | None = None
        self._pending: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._lock = threading.Lock()
        # Items: a closed bucket to write, an Event to set once all before it
        # are written (flush), or None to stop.
        self._queue: queue.Queue[tuple[int, list[dict[str, Any]]] | threading.Event | None] = (
            queue.Queue()
        )
        self.rows_written = 0
        self.buckets_written = 0
        self.last_error: str | None = None
        self.migrated_from: int = 0
        self._conn = self._open()
        self._reader = self._open_reader()
        self._writer = threading.Thread(target=self._write_loop, name="bpfscope-store", daemon=True)
        self._writer.start()

    # -- opening -------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create {self.path.parent}: {exc.strerror}; choose another --db"
            ) from None
        try:
            conn = _connect(self.path)
            self.migrated_from = migrate(conn)
            conn.execute("SELECT count(*) FROM flow_buckets LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._explain(exc)) from None
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        try:
            conn = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(self._explain(exc)) from None
        register_sql(conn)
        return conn

    def _explain(self, exc: sqlite3.DatabaseError) -> str:
        return _explain(self.path, exc)

    # -- writing -------------------------------------------------------------

    def _bucket_of(self, t: float) -> int:
        return int(t) - int(t) % self.bucket_seconds

    def add(self, samples: Iterable[FlowSample], now: float | None = None) -> None:
        """Sum one interval's deltas into the open bucket (cheap, no I/O)."""
        now = self._clock() if now is None else now
        bucket = self._bucket_of(now)
        with self._lock:
            if self._open_bucket is not None and bucket != self._open_bucket:
                self._close_bucket_locked()
            self._open_bucket = bucket
            for s in samples:
                self._add_locked(s)

    def _add_locked(self, s: FlowSample) -> None:
        key = s.key()
        row = self._pending.get(key)
        if row is None:
            if not (s.new or s.closed or any(getattr(s, c) for c in _COUNTERS)):
                return
            row = self._pending[key] = {c: getattr(s, c, 0) for c in ROW_COLUMNS}
            row.update(connections=0, opened=0, closed=0, durations=0, duration_ms_sum=0,
                       duration_ms_max=None, rtt_min_us=None, rtt_avg_us=None, rtt_max_us=None,
                       rtt_samples=0, _conns=set())  # fmt: skip
        else:
            for c in _COUNTERS:
                row[c] += getattr(s, c)
            row["remote_name"] = s.remote_name or row["remote_name"]
        conns: set[int] = row["_conns"]
        conn = s.conn or hash(key)
        if conn not in conns:
            conns.add(conn)
            row["connections"] += 1
        row["opened"] += s.new
        if s.closed:
            row["closed"] += 1
            if s.duration_ms is not None:
                row["durations"] += 1
                row["duration_ms_sum"] += s.duration_ms
                row["duration_ms_max"] = max(row["duration_ms_max"] or 0, s.duration_ms)
        if s.rtt_us is not None:
            n = row["rtt_samples"]
            row["rtt_min_us"] = min(row["rtt_min_us"] or s.rtt_us, s.rtt_us)
            row["rtt_max_us"] = max(row["rtt_max_us"] or 0, s.rtt_us)
            row["rtt_avg_us"] = ((row["rtt_avg_us"] or 0) * n + s.rtt_us) / (n + 1)
            row["rtt_samples"] = n + 1

    def _close_bucket_locked(self) -> None:
        if self._open_bucket is not None and self._pending:
            self._queue.put((self._open_bucket, list(self._pending.values())))
        self._pending = {}
        self._open_bucket = None

    def flush(self, timeout: float = 10.0) -> None:
        """Close the open bucket and wait until everything queued is on disk."""
        with self._lock:
            self._close_bucket_locked()
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            bucket, rows = item
            try:
                self._write_bucket(bucket, rows)
                self._apply_retention()
                self.last_error = None
            except sqlite3.Error as exc:
                self.last_error = (
                    self._explain(exc) if isinstance(exc, sqlite3.DatabaseError) else str(exc)
                )
                log.error("history write failed: %s", self.last_error)

    def _write_bucket(self, bucket: int, rows: Sequence[dict[str, Any]]) -> None:
        values = [
            tuple(
                round(r[c]) if c == "rtt_avg_us" and r[c] is not None else r[c] for c in ROW_COLUMNS
            )
            for r in rows
        ]
        hour = bucket - bucket % HOUR
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                upsert_sql("flow_buckets"), [(bucket, self.bucket_seconds, *v) for v in values]
            )
            # the hourly rollup, in the same transaction: never out of step
            self._conn.executemany(upsert_sql("flow_hours"), [(hour, HOUR, *v) for v in values])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self.rows_written += len(rows)
        self.buckets_written += 1
        if self.buckets_written % 360 == 1:
            # fresh planner statistics (sampled: cheap) once an hour, so
            # queries pick the index by process or remote where it pays
            self._conn.execute("PRAGMA analysis_limit=400")
            self._conn.execute("ANALYZE")

    def size_bytes(self) -> int:
        page_count = self._reader.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._reader.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    def _apply_retention(self) -> None:
        cutoff = self._bucket_of(self._clock() - self.retention_seconds)
        self._conn.execute("DELETE FROM flow_buckets WHERE bucket_start < ?", (cutoff,))
        # an hour leaves the rollup once all of it is past the cutoff
        self._conn.execute("DELETE FROM flow_hours WHERE bucket_start + ? <= ?", (HOUR, cutoff))
        # By size: drop the oldest buckets until the data fits, then give
        # the freed pages back to the filesystem.
        while self.size_bytes() > self.max_bytes:
            oldest = self._conn.execute("SELECT min(bucket_start) FROM flow_buckets").fetchone()[0]
            newest = self._conn.execute("SELECT max(bucket_start) FROM flow_buckets").fetchone()[0]
            if oldest is None or oldest == newest:
                break  # never delete the bucket just written
            self._conn.execute("DELETE FROM flow_buckets WHERE bucket_start = ?", (oldest,))
            self._conn.execute(
                "DELETE FROM flow_hours WHERE bucket_start + ? <= ?",
                (HOUR, oldest + self.bucket_seconds),
            )
            self._conn.execute("PRAGMA incremental_vacuum")
        self._conn.execute("PRAGMA incremental_vacuum")

    # -- reading -------------------------------------------------------------

    def query(self, q: HistoryQuery) -> list[dict[str, Any]]:
        return query_history(self._reader, q, self.bucket_seconds)

    def page(self, q: HistoryQuery, cursor: str | None = None) -> HistoryPage:
        """One page of ``q`` from ``cursor`` (keyset: stable while writing)."""
        return query_page(self._reader, q, self.bucket_seconds, cursor)

    def stats(self) -> dict[str, Any]:
        count = self._reader.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
        span = self._reader.execute(
            "SELECT min(bucket_start), max(bucket_start) FROM flow_buckets"
        ).fetchone()
        return {
            "path": str(self.path),
            "schema_version": SCHEMA_VERSION,
            "rows": count,
            "oldest_bucket": span[0],
            "newest_bucket": span[1],
            "size_bytes": self.size_bytes(),
            "bucket_seconds": self.bucket_seconds,
            "rows_written": self.rows_written,
            "queued_buckets": self._queue.qsize(),
            "error": self.last_error,
        }

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._writer.join(timeout=10)
        self._conn.close()
        self._reader.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _explain(path: Path, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text or "malformed" in text:
        return (
            f"history file {path} is corrupt ({text}); move it aside to start a "
            "new history, or pass another --db"
        )
    if "readonly" in text or "unable to open" in text:
        return f"history file {path} is not writable ({text}); fix permissions or use --db"
    return f"history file {path}: {text}"


class HistoryReader:
    """A read-only view of a history file for ``bpfscope history``: no
    migrations, no writer thread, nothing written; works while the agent
    writes (WAL readers do not block the writer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=5.0, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA busy_timeout=5000")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot read history file {self.path}: {exc}; pass another --db"
            ) from None
        if version == 0:
            conn.close()
            raise StoreError(f"{self.path} holds no bpfscope history yet (schema version 0)")
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                f"history schema version {version} is newer than this bpfscope "
                f"understands ({SCHEMA_VERSION}); upgrade bpfscope"
            )
        register_sql(conn)
        self._conn = conn
        row = conn.execute(
            "SELECT bucket_seconds FROM flow_buckets ORDER BY bucket_start DESC LIMIT 1"
        ).fetchone()
        self.bucket_seconds = int(row[0]) if row else 10

    def query(self, q: HistoryQuery) -> list[dict[str, Any]]:
        return self._run(query_history, q)  # type: ignore[no-any-return]

    def page(self, q: HistoryQuery, cursor: str | None = None) -> HistoryPage:
        return self._run(query_page, q, cursor)  # type: ignore[no-any-return]

    def _run(self, fn: Any, q: HistoryQuery, *args: Any) -> Any:
        try:
            return fn(self._conn, q, self.bucket_seconds, *args)
        except sqlite3.DatabaseError as exc:
            raise StoreError(_explain(self.path, exc)) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
