"""The history's schema: the migrations that build it, version by version,
and the columns the writer fills (with how a row absorbs another for the
same key)."""

from __future__ import annotations

from typing import Final

__all__ = ["COUNTERS", "MIGRATIONS", "ROW_COLUMNS", "SCHEMA_VERSION", "upsert_sql"]

COUNTERS: Final = (
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


def _rollup_table(table: str, size: int) -> str:
    """A rollup of flow_buckets per ``size`` seconds, built from what the
    file holds (part of migration 4: never edit)."""
    return f"""
    CREATE TABLE {table} (
        bucket_start INTEGER NOT NULL, bucket_seconds INTEGER NOT NULL,
        proto TEXT NOT NULL, family INTEGER NOT NULL, laddr TEXT NOT NULL,
        lport INTEGER NOT NULL, raddr TEXT NOT NULL, rport INTEGER NOT NULL,
        pid INTEGER NOT NULL, comm TEXT NOT NULL, container TEXT NOT NULL,
        tx_bytes INTEGER NOT NULL, rx_bytes INTEGER NOT NULL, tx_calls INTEGER NOT NULL,
        rx_calls INTEGER NOT NULL, retransmits INTEGER NOT NULL, resets INTEGER NOT NULL,
        remote_class TEXT NOT NULL, remote_name TEXT NOT NULL, tx_segs INTEGER NOT NULL,
        rx_segs INTEGER NOT NULL, retrans_bytes INTEGER NOT NULL, direction TEXT NOT NULL,
        connections INTEGER NOT NULL, opened INTEGER NOT NULL, closed INTEGER NOT NULL,
        durations INTEGER NOT NULL, duration_ms_sum INTEGER NOT NULL,
        duration_ms_max INTEGER, rtt_min_us INTEGER, rtt_avg_us INTEGER,
        rtt_max_us INTEGER, rtt_samples INTEGER NOT NULL,
        PRIMARY KEY (bucket_start, proto, laddr, lport, raddr, rport, pid)
    ) WITHOUT ROWID;
    CREATE INDEX {table}_pid ON {table} (pid, bucket_start);
    CREATE INDEX {table}_remote ON {table} (raddr, bucket_start);
    INSERT INTO {table} SELECT
        bucket_start - bucket_start % {size}, {size}, proto, max(family), laddr, lport, raddr,
        rport, pid, max(comm), max(container), sum(tx_bytes), sum(rx_bytes), sum(tx_calls),
        sum(rx_calls), sum(retransmits), sum(resets), max(remote_class), max(remote_name),
        sum(tx_segs), sum(rx_segs), sum(retrans_bytes), '', sum(connections), sum(opened),
        0, 0, 0, NULL, NULL, NULL, NULL, 0
        FROM flow_buckets
        GROUP BY bucket_start - bucket_start % {size}, proto, laddr, lport, raddr, rport, pid;
    """


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
    # connection each. flow_hours and flow_5min: the same rows summed per
    # hour and per 5 minutes, for long ranges (clustered by time). An index
    # by process for one flow's series.
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
    """
    + _rollup_table("flow_hours", 3600)
    + _rollup_table("flow_5min", 300),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# The row columns the writer fills besides bucket_start and bucket_seconds.
ROW_COLUMNS: Final = (
    "proto", "family", "laddr", "lport", "raddr", "rport", "pid", "comm", "container",
    *COUNTERS, "remote_class", "remote_name", "direction", "connections", "opened",
    "closed", "durations", "duration_ms_sum", "duration_ms_max",
    "rtt_min_us", "rtt_avg_us", "rtt_max_us", "rtt_samples",
)  # fmt: skip
_KEY_COLUMNS: Final = "bucket_start, proto, laddr, lport, raddr, rport, pid"


def _merge(c: str) -> str:
    """How a row already stored for a key absorbs another one for it."""
    if c in COUNTERS or c in ("connections", "opened", "closed", "durations",
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
