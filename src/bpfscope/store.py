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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from .flowgroup import group_sql
from .flowquery import FlowFilter, register_sql

__all__ = [
    "DEFAULT_PATH",
    "SCHEMA_VERSION",
    "FlowSample",
    "HistoryQuery",
    "HistoryReader",
    "Store",
    "StoreError",
    "default_path",
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
    """Traffic of one flow during one collection interval (deltas)."""

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
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


@dataclass(frozen=True)
class HistoryQuery:
    since: float | None = None
    until: float | None = None
    filter: FlowFilter = field(default_factory=FlowFilter)
    limit: int = 1000
    group_by: str | None = None  # one of flowgroup.GROUP_KEYS: one row per group
    offset: int = 0  # rows (or groups, or series points) to skip: paging
    step: int | None = None  # a time series: totals per step seconds, oldest first


def query_history(
    conn: sqlite3.Connection, q: HistoryQuery, bucket_seconds: int
) -> list[dict[str, Any]]:
    """Rows of ``q``, newest bucket first, biggest flow first within one.
    The filter's SQL comes from :meth:`FlowFilter.sql`, so history and the
    live views select the same flows."""
    where: list[str] = []
    args: list[Any] = []
    if q.since is not None:
        where.append("bucket_start >= ?")
        args.append(int(q.since) - int(q.since) % bucket_seconds)
    if q.until is not None:
        where.append("bucket_start <= ?")
        args.append(q.until)
    cond, cond_args = q.filter.sql()
    if cond:
        where.append(cond)
        args += cond_args
    if q.group_by is not None:
        return _query_groups(conn, q, where, args)
    if q.step is not None:
        return _query_series(conn, q, where, args, bucket_seconds)
    sql = "SELECT * FROM flow_buckets"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY bucket_start DESC, tx_bytes + rx_bytes DESC LIMIT ? OFFSET ?"
    args += [q.limit, q.offset]
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


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
                if not any(getattr(s, c) for c in _COUNTERS):
                    continue
                row = self._pending.get(s.key())
                if row is None:
                    self._pending[s.key()] = asdict(s)
                else:
                    for c in _COUNTERS:
                        row[c] += getattr(s, c)
                    row["remote_name"] = s.remote_name or row["remote_name"]

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
        cols = [f.name for f in fields(FlowSample)]
        placeholders = ", ".join("?" for _ in range(len(cols) + 2))
        updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNTERS)
        sql = (
            f"INSERT INTO flow_buckets (bucket_start, bucket_seconds, {', '.join(cols)}) "
            f"VALUES ({placeholders}) "
            "ON CONFLICT (bucket_start, proto, laddr, lport, raddr, rport, pid) "
            f"DO UPDATE SET {updates}"
        )
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._conn.executemany(
                sql, [(bucket, self.bucket_seconds, *(r[c] for c in cols)) for r in rows]
            )
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self.rows_written += len(rows)
        self.buckets_written += 1

    def size_bytes(self) -> int:
        page_count = self._reader.execute("PRAGMA page_count").fetchone()[0]
        page_size = self._reader.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count) * int(page_size)

    def _apply_retention(self) -> None:
        cutoff = self._bucket_of(self._clock() - self.retention_seconds)
        self._conn.execute("DELETE FROM flow_buckets WHERE bucket_start < ?", (cutoff,))
        # By size: drop the oldest buckets until the data fits, then give
        # the freed pages back to the filesystem.
        while self.size_bytes() > self.max_bytes:
            oldest = self._conn.execute("SELECT min(bucket_start) FROM flow_buckets").fetchone()[0]
            newest = self._conn.execute("SELECT max(bucket_start) FROM flow_buckets").fetchone()[0]
            if oldest is None or oldest == newest:
                break  # never delete the bucket just written
            self._conn.execute("DELETE FROM flow_buckets WHERE bucket_start = ?", (oldest,))
            self._conn.execute("PRAGMA incremental_vacuum")
        self._conn.execute("PRAGMA incremental_vacuum")

    # -- reading -------------------------------------------------------------

    def query(self, q: HistoryQuery) -> list[dict[str, Any]]:
        return query_history(self._reader, q, self.bucket_seconds)

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


def _query_groups(
    conn: sqlite3.Connection, q: HistoryQuery, where: list[str], args: list[Any]
) -> list[dict[str, Any]]:
    """One row per group (flowgroup's keys as SQL): distinct flows, bytes
    each way, and rates over the window asked for (since..until, or now),
    else over the buckets found."""
    assert q.group_by is not None
    sql = (
        f"SELECT {group_sql(q.group_by)} AS key, "
        f"count(DISTINCT {_FLOW_KEY}) AS connections, "
        "sum(tx_bytes) AS tx_bytes, sum(rx_bytes) AS rx_bytes, "
        "min(bucket_start) AS first, max(bucket_start + bucket_seconds) AS last "
        "FROM flow_buckets"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " GROUP BY key ORDER BY sum(tx_bytes) + sum(rx_bytes) DESC, key LIMIT ? OFFSET ?"
    rows = conn.execute(sql, [*args, q.limit, q.offset]).fetchall()
    if not rows:
        return []
    if q.since is not None:
        end = q.until if q.until is not None else time.time()
        window = max(end - q.since, 1.0)
    else:
        window = max(max(r[5] for r in rows) - min(r[4] for r in rows), 1)
    return [
        {
            "group_by": q.group_by,
            "key": key,
            "connections": conns,
            "tx_bytes": tx,
            "rx_bytes": rx,
            "tx_rate": round(tx / window, 3),
            "rx_rate": round(rx / window, 3),
        }
        for key, conns, tx, rx, _first, _last in rows
    ]


_FLOW_KEY: Final = (
    "proto || '|' || laddr || '|' || lport || '|' || raddr || '|' || rport || '|' || pid"
)


def _query_series(
    conn: sqlite3.Connection,
    q: HistoryQuery,
    where: list[str],
    args: list[Any],
    bucket_seconds: int,
) -> list[dict[str, Any]]:
    """Totals of the selected flows per step (a whole number of buckets),
    oldest first: what a chart of one group (its filter) draws."""
    assert q.step is not None
    step = max(bucket_seconds, q.step - q.step % bucket_seconds)
    sql = (
        f"SELECT bucket_start - bucket_start % {step} AS t, count(DISTINCT {_FLOW_KEY}), "
        "sum(tx_bytes), sum(rx_bytes) FROM flow_buckets"
    )
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " GROUP BY t ORDER BY t LIMIT ? OFFSET ?"
    return [
        {
            "time": t,
            "step": step,
            "connections": conns,
            "tx_bytes": tx,
            "rx_bytes": rx,
            "tx_rate": round(tx / step, 3),
            "rx_rate": round(rx / step, 3),
        }
        for t, conns, tx, rx in conn.execute(sql, [*args, q.limit, q.offset])
    ]


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
        try:
            return query_history(self._conn, q, self.bucket_seconds)
        except sqlite3.DatabaseError as exc:
            raise StoreError(_explain(self.path, exc)) from None

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> HistoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
