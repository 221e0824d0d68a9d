"""Reading the flow history: rows, groups and time series over a time range,
with keyset cursors.

Three tables hold the same data: ``flow_buckets`` (one row per history key
per bucket), and the same rows summed per hour (``flow_hours``) and per 5
minutes (``flow_5min``), written with each bucket. A query reads whole
hours inside its range from ``flow_hours``, the rest in whole 5 minutes
from ``flow_5min``, and only the ragged edges from ``flow_buckets``, so a
day costs about 24 rollup rows per key instead of 8,640 bucket rows. All
have the same column names, so the filter's SQL (:meth:`FlowFilter.sql`) and the
group keys (:func:`group_sql`) apply to either.

Paging is by keyset, not offset: the first page pins the newest bucket
(``until``), and the cursor carries it and the last row's sort key, so rows
the agent writes meanwhile neither repeat nor push rows off a page.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any, Final

from .flowgroup import group_sql
from .flowquery import BadQuery, FlowFilter

__all__ = ["HOUR", "ROLLUPS", "HistoryPage", "HistoryQuery", "query_history", "query_page"]

HOUR: Final = 3600
# The rollup tables, coarsest first: the same rows summed per unit of time.
ROLLUPS: Final = (("flow_hours", HOUR), ("flow_5min", 300))

# One SQLite integer; anything beyond is a forged cursor.
_MAX_INT: Final = 2**62


@dataclass(frozen=True)
class HistoryQuery:
    since: float | None = None
    until: float | None = None
    filter: FlowFilter = field(default_factory=FlowFilter)
    limit: int = 1000
    group_by: str | None = None  # one of flowgroup.GROUP_KEYS: one row per group
    step: int | None = None  # a time series: totals per step seconds, oldest first
    after: tuple[Any, ...] | None = None  # keyset: the sort key of the last row seen


@dataclass(frozen=True)
class HistoryPage:
    items: list[dict[str, Any]]
    next_cursor: str | None


def _bucket_floor(t: float, bucket_seconds: int) -> int:
    return int(t) - int(t) % bucket_seconds


def _plan(
    lo: int, hi: int, bucket_seconds: int, levels: tuple[tuple[str, int], ...]
) -> list[tuple[str, int, int]]:
    """(table, first, last) bucket_start ranges that cover the buckets
    lo..hi (inclusive) exactly: whole units of the coarsest rollup, the
    ragged edges from finer ones, the rest from flow_buckets."""
    if lo > hi:
        return []
    usable = [(t, size) for t, size in levels if size % bucket_seconds == 0]
    if not usable:
        return [("flow_buckets", lo, hi)]
    (table, size), finer = usable[0], tuple(usable[1:])
    first = -(-lo // size) * size
    # a unit is whole when its last bucket starts at or before hi
    end = (hi + bucket_seconds) // size * size
    if first >= end:
        return _plan(lo, hi, bucket_seconds, finer)
    return [
        *_plan(lo, first - 1, bucket_seconds, finer),
        (table, first, end - 1),
        *_plan(end, hi, bucket_seconds, finer),
    ]


def _where(q: HistoryQuery, time_cond: str, time_args: list[Any]) -> tuple[str, list[Any]]:
    cond, cond_args = q.filter.sql()
    if cond:
        return f"{time_cond} AND {cond}", [*time_args, *cond_args]
    return time_cond, list(time_args)


def _union(
    q: HistoryQuery, select: str, bucket_seconds: int, newest: int, coarsest: int = HOUR
) -> tuple[str, list[Any]]:
    """``select`` (a column list) over q's range: rollups no coarser than
    ``coarsest`` seconds where they cover whole units, buckets elsewhere."""
    hi = int(min(q.until, newest)) if q.until is not None else newest
    # no since: from Unix time 0, which every rollup unit is aligned to
    lo = _bucket_floor(q.since, bucket_seconds) if q.since is not None else 0
    levels = tuple((t, size) for t, size in ROLLUPS if size <= coarsest)
    parts: list[str] = []
    args: list[Any] = []
    for table, first, last in _plan(lo, hi, bucket_seconds, levels):
        w, a = _where(q, "bucket_start BETWEEN ? AND ?", [first, last])
        parts.append(f"SELECT {select} FROM {table} WHERE {w}")
        args += a
    if not parts:
        return f"SELECT {select} FROM flow_buckets WHERE 0", []
    return " UNION ALL ".join(parts), args


# The sums every group and series reports, over rows of either table.
_SUMS: Final = (
    "sum(opened) AS connections, sum(closed) AS closed, "
    "sum(tx_bytes) AS tx_bytes, sum(rx_bytes) AS rx_bytes, "
    "sum(retrans_bytes) AS retrans_bytes, "
    "min(rtt_min_us) AS rtt_min_us, max(rtt_max_us) AS rtt_max_us, "
    "CAST(sum(rtt_avg_us * rtt_samples) / nullif(sum(rtt_samples), 0) AS INTEGER) AS rtt_avg_us, "
    "CAST(sum(duration_ms_sum) / nullif(sum(durations), 0) AS INTEGER) AS duration_avg_ms"
)
_SUM_INPUTS: Final = (
    "opened, closed, tx_bytes, rx_bytes, retrans_bytes, rtt_min_us, rtt_max_us, "
    "rtt_avg_us, rtt_samples, duration_ms_sum, durations"
)
_HEALTH: Final = ("closed", "retrans_bytes", "rtt_min_us", "rtt_avg_us", "rtt_max_us",
                  "duration_avg_ms")  # fmt: skip


def newest_bucket(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT max(bucket_start) FROM flow_buckets").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def query_history(
    conn: sqlite3.Connection, q: HistoryQuery, bucket_seconds: int
) -> list[dict[str, Any]]:
    """Rows of ``q``; see :func:`_query`."""
    rows = _query(conn, q, bucket_seconds)
    for r in rows:
        r.pop("_rowid", None)
    return rows


def _query(conn: sqlite3.Connection, q: HistoryQuery, bucket_seconds: int) -> list[dict[str, Any]]:
    """Rows of ``q`` (buckets newest first and biggest first within one;
    groups biggest first; series points oldest first), after ``q.after``.
    The filter's SQL comes from :meth:`FlowFilter.sql`, so history and the
    live views select the same flows."""
    newest = newest_bucket(conn)
    if newest is None:
        return []
    if q.group_by is not None:
        return _query_groups(conn, q, bucket_seconds, newest)
    if q.step is not None:
        return _query_series(conn, q, bucket_seconds, newest)
    where: list[str] = []
    args: list[Any] = []
    if q.since is not None:
        where.append("bucket_start >= ?")
        args.append(_bucket_floor(q.since, bucket_seconds))
    if q.until is not None:
        where.append("bucket_start <= ?")
        args.append(q.until)
    cond, cond_args = q.filter.sql()
    if cond:
        where.append(cond)
        args += cond_args
    if q.after is not None:
        where.append("(bucket_start, tx_bytes + rx_bytes, rowid) < (?, ?, ?)")
        args += list(q.after)
    sql = "SELECT rowid AS _rowid, * FROM flow_buckets"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY bucket_start DESC, tx_bytes + rx_bytes DESC, rowid DESC LIMIT ?"
    cur = conn.execute(sql, [*args, q.limit])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def _query_groups(
    conn: sqlite3.Connection, q: HistoryQuery, bucket_seconds: int, newest: int
) -> list[dict[str, Any]]:
    """One row per group (flowgroup's keys as SQL): connections begun in the
    range, bytes each way, health, and rates over the window asked for
    (since..until, or now), else over the history up to until."""
    assert q.group_by is not None
    inner, args = _union(
        q, f"{group_sql(q.group_by)} AS key, {_SUM_INPUTS}",
        bucket_seconds, newest,
    )  # fmt: skip
    sql = f"SELECT key, {_SUMS} FROM ({inner}) GROUP BY key"
    if q.after is not None:
        total = "sum(tx_bytes) + sum(rx_bytes)"
        sql += f" HAVING {total} < ? OR ({total} = ? AND key > ?)"
        args += [q.after[0], q.after[0], q.after[1]]
    sql += " ORDER BY sum(tx_bytes) + sum(rx_bytes) DESC, key LIMIT ?"
    cur = conn.execute(sql, [*args, q.limit])
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur]
    if not rows:
        return []
    if q.since is not None:
        end = q.until if q.until is not None else time.time()
        window = max(end - q.since, 1.0)
    else:
        # the whole history up to until: from its oldest bucket
        oldest = conn.execute("SELECT min(bucket_start) FROM flow_buckets").fetchone()[0]
        end = min(q.until, newest) if q.until is not None else newest
        window = max(end + bucket_seconds - oldest, 1)
    return [
        {
            "group_by": q.group_by,
            "key": r["key"],
            "connections": r["connections"],
            "tx_bytes": r["tx_bytes"],
            "rx_bytes": r["rx_bytes"],
            "tx_rate": round(r["tx_bytes"] / window, 3),
            "rx_rate": round(r["rx_bytes"] / window, 3),
            **{h: r[h] for h in _HEALTH},
        }
        for r in rows
    ]


def _query_series(
    conn: sqlite3.Connection, q: HistoryQuery, bucket_seconds: int, newest: int
) -> list[dict[str, Any]]:
    """Totals of the selected flows per step (a whole number of buckets),
    oldest first: what a chart of one group (its filter) draws. Steps of
    whole hours read the hourly rollup."""
    assert q.step is not None
    step = max(bucket_seconds, q.step - q.step % bucket_seconds)
    # a rollup serves the steps it divides; finer steps read the buckets
    coarsest = max((size for _, size in ROLLUPS if step % size == 0), default=0)
    inner, args = _union(q, f"bucket_start, {_SUM_INPUTS}", bucket_seconds, newest, coarsest)
    sql = f"SELECT bucket_start - bucket_start % {step} AS t, {_SUMS} FROM ({inner}) GROUP BY t"
    if q.after is not None:
        sql += " HAVING t > ?"
        args.append(q.after[0])
    sql += " ORDER BY t LIMIT ?"
    cur = conn.execute(sql, [*args, q.limit])
    names = [d[0] for d in cur.description]
    out = []
    for row in cur:
        r = dict(zip(names, row, strict=True))
        out.append(
            {
                "time": r["t"],
                "step": step,
                "connections": r["connections"],
                "tx_bytes": r["tx_bytes"],
                "rx_bytes": r["rx_bytes"],
                "tx_rate": round(r["tx_bytes"] / step, 3),
                "rx_rate": round(r["rx_bytes"] / step, 3),
                **{h: r[h] for h in _HEALTH},
            }
        )
    return out


# -- keyset cursors ----------------------------------------------------------


def _sort_key(q: HistoryQuery, row: dict[str, Any]) -> list[Any]:
    if q.group_by is not None:
        return [row["tx_bytes"] + row["rx_bytes"], row["key"]]
    if q.step is not None:
        return [row["time"]]
    return [row["bucket_start"], row["tx_bytes"] + row["rx_bytes"], row["_rowid"]]


def encode_cursor(until: int, after: list[Any]) -> str:
    raw = json.dumps({"u": until, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, q: HistoryQuery) -> tuple[int, tuple[Any, ...]]:
    """(pinned until, last sort key) of a cursor made for a query of q's form."""
    size = 2 if q.group_by is not None else 1 if q.step is not None else 3
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        data = json.loads(raw)
        until, after = data["u"], data["a"]
        ints = after[:1] if q.group_by is not None else after
        if (
            not isinstance(until, int)
            or not isinstance(after, list)
            or len(after) != size
            or not all(isinstance(v, int) and abs(v) < _MAX_INT for v in [until, *ints])
            or (q.group_by is not None and not isinstance(after[1], str))
        ):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadQuery(
            f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page "
            "of the same query"
        ) from None
    return until, tuple(after)


def query_page(
    conn: sqlite3.Connection, q: HistoryQuery, bucket_seconds: int, cursor: str | None
) -> HistoryPage:
    """One page of ``q`` and the cursor of the next (None: this was the last)."""
    if cursor:
        until, after = decode_cursor(cursor, q)
        q = replace(q, until=until if q.until is None else min(q.until, until), after=after)
    else:
        newest = newest_bucket(conn)
        if newest is None:
            return HistoryPage([], None)
        # pin the range: later pages see the same buckets however many are written
        q = replace(q, until=newest if q.until is None else min(q.until, newest))
    assert q.until is not None
    rows = _query(conn, replace(q, limit=q.limit + 1), bucket_seconds)
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    nxt = encode_cursor(int(q.until), _sort_key(q, rows[-1])) if more else None
    for r in rows:
        r.pop("_rowid", None)
    return HistoryPage(rows, nxt)
