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
from .historyquery import ROLLUPS, HistoryPage, HistoryQuery, query_history, query_page
from .historyschema import COUNTERS, MIGRATIONS, ROW_COLUMNS, SCHEMA_VERSION, upsert_sql

__all__ = [
    "DEFAULT_PATH",
    "MIGRATIONS",
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
    "upsert_sql",
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
    # aggregate: counts given rather than one connection (``conn``):
    # ``folded`` short connections the collector folded (active in the
    # interval), ``opened_n``/``closed_n`` connections opened and closed
    # (with ``durations`` lifetimes summing ``duration_ms_sum``)
    aggregate: bool = False
    folded: int = 0
    opened_n: int = 0
    closed_n: int = 0
    durations: int = 0
    duration_ms_sum: int = 0

    def key(self) -> tuple[Any, ...]:
        return (self.proto, self.laddr, self.lport, self.raddr, self.rport, self.pid)


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
        # counted once here, then kept by the writer: a count(*) per poll
        # would walk millions of index entries
        self._rows: int = self._conn.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
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
            if not (s.new or s.closed or s.aggregate or any(getattr(s, c) for c in COUNTERS)):
                return
            row = self._pending[key] = {c: getattr(s, c, 0) for c in ROW_COLUMNS}
            row.update(connections=0, opened=0, closed=0, durations=0, duration_ms_sum=0,
                       duration_ms_max=None, rtt_min_us=None, rtt_avg_us=None, rtt_max_us=None,
                       rtt_samples=0, _conns=set())  # fmt: skip
        else:
            for c in COUNTERS:
                row[c] += getattr(s, c)
            row["remote_name"] = s.remote_name or row["remote_name"]
        if s.duration_ms is not None:
            row["duration_ms_max"] = max(row["duration_ms_max"] or 0, s.duration_ms)
        if s.aggregate:
            row["connections"] += s.folded
            row["opened"] += s.opened_n
            row["closed"] += s.closed_n
            row["durations"] += s.durations
            row["duration_ms_sum"] += s.duration_ms_sum
            return
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
        in_bucket = "SELECT count(*) FROM flow_buckets WHERE bucket_start = ?"
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            before = self._conn.execute(in_bucket, (bucket,)).fetchone()[0]
            self._conn.executemany(
                upsert_sql("flow_buckets"), [(bucket, self.bucket_seconds, *v) for v in values]
            )
            added = self._conn.execute(in_bucket, (bucket,)).fetchone()[0] - before
            # the rollups, in the same transaction: never out of step
            for table, size in ROLLUPS:
                unit = bucket - bucket % size
                self._conn.executemany(upsert_sql(table), [(unit, size, *v) for v in values])
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._rows += added
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
        gone = self._conn.execute("DELETE FROM flow_buckets WHERE bucket_start < ?", (cutoff,))
        self._rows -= gone.rowcount
        self._trim_rollups(cutoff)
        # By size: drop the oldest buckets until the data fits, then give
        # the freed pages back to the filesystem.
        while self.size_bytes() > self.max_bytes:
            oldest = self._conn.execute("SELECT min(bucket_start) FROM flow_buckets").fetchone()[0]
            newest = self._conn.execute("SELECT max(bucket_start) FROM flow_buckets").fetchone()[0]
            if oldest is None or oldest == newest:
                break  # never delete the bucket just written
            gone = self._conn.execute("DELETE FROM flow_buckets WHERE bucket_start = ?", (oldest,))
            self._rows -= gone.rowcount
            self._trim_rollups(oldest + self.bucket_seconds)
            self._conn.execute("PRAGMA incremental_vacuum")
        self._conn.execute("PRAGMA incremental_vacuum")

    def _trim_rollups(self, cutoff: int) -> None:
        """A rollup unit leaves once all of it is older than ``cutoff`` (the
        unit the cutoff falls in stays whole)."""
        for table, size in ROLLUPS:
            # bucket_start alone on one side: the delete walks the index
            self._conn.execute(f"DELETE FROM {table} WHERE bucket_start <= ?", (cutoff - size,))

    # -- reading -------------------------------------------------------------

    def query(self, q: HistoryQuery) -> list[dict[str, Any]]:
        return query_history(self._reader, q, self.bucket_seconds)

    def page(self, q: HistoryQuery, cursor: str | None = None) -> HistoryPage:
        """One page of ``q`` from ``cursor`` (keyset: stable while writing)."""
        return query_page(self._reader, q, self.bucket_seconds, cursor)

    def stats(self) -> dict[str, Any]:
        count = self._rows
        # two queries: SQLite answers a lone min() or max() from the index,
        # but both in one SELECT scan the whole table
        span = [
            self._reader.execute(f"SELECT {f}(bucket_start) FROM flow_buckets").fetchone()[0]
            for f in ("min", "max")
        ]
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
        self.version = version
        row = conn.execute(
            "SELECT bucket_seconds FROM flow_buckets ORDER BY bucket_start DESC LIMIT 1"
        ).fetchone()
        self.bucket_seconds = int(row[0]) if row else 10

    def query(self, q: HistoryQuery) -> list[dict[str, Any]]:
        return self._run(query_history, q)  # type: ignore[no-any-return]

    def page(self, q: HistoryQuery, cursor: str | None = None) -> HistoryPage:
        return self._run(query_page, q, cursor)  # type: ignore[no-any-return]

    def _run(self, fn: Any, q: HistoryQuery, *args: Any) -> Any:
        if self.version < 4 and (q.group_by is not None or q.step is not None):
            # groups and series need schema 4's columns and rollups; a reader
            # never migrates (the agent does when it next opens the file)
            raise StoreError(
                f"history file {self.path} has schema version {self.version}: groups and "
                "series need version 4; run `bpfscope serve` on it once to upgrade it"
            )
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
