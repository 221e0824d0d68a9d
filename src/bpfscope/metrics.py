"""Prometheus metrics of the agent, via prometheus_client.

Counters are summed from the collectors' per-interval deltas and events
into label sets that stay bounded by default (container, command, remote
class). Raw remote addresses and ports become labels only when asked
(``--metrics-labels remote``), and then a cap limits the number of series;
what the cap turned away is counted, not hidden. Exposition happens at
scrape time through a custom collector, so a scrape costs one pass over the
label sets, never over the flows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .flows.events import DURATION_BUCKETS

__all__ = [
    "DURATION_BUCKETS",
    "LABEL_SETS",
    "RTT_BUCKETS",
    "DropMetrics",
    "FlowMetrics",
    "PollLike",
    "PollTimingMetrics",
    "SyscallMetrics",
]

# TCP smoothed RTT: from loopback (tens of microseconds) to satellite links.
RTT_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip

LABEL_SETS: Final[dict[str, tuple[str, ...]]] = {
    "default": ("container", "comm", "remote_class"),
    "remote": ("container", "comm", "remote_class", "remote_addr", "remote_port"),
}


class FlowLike(Protocol):
    @property
    def proto(self) -> str: ...
    @property
    def comm(self) -> str: ...
    @property
    def container(self) -> str | None: ...
    @property
    def raddr(self) -> str | None: ...
    @property
    def rport(self) -> int | None: ...
    @property
    def tx_delta(self) -> int: ...
    @property
    def rx_delta(self) -> int: ...
    @property
    def tx_segs_delta(self) -> int: ...
    @property
    def rx_segs_delta(self) -> int: ...
    @property
    def retrans_bytes_delta(self) -> int: ...
    @property
    def direction(self) -> str | None: ...
    @property
    def rtt_us(self) -> int | None: ...


class EventLike(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def comm(self) -> str: ...
    @property
    def container(self) -> str | None: ...
    @property
    def raddr(self) -> str: ...
    @property
    def rport(self) -> int: ...
    @property
    def direction(self) -> str | None: ...
    @property
    def duration(self) -> float | None: ...


class TallyLike(Protocol):
    """Events of one group in one poll (bpfscope.flows.events.ConnTally)."""

    @property
    def type(self) -> str: ...
    @property
    def comm(self) -> str: ...
    @property
    def container(self) -> str | None: ...
    @property
    def raddr(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def direction(self) -> str | None: ...
    @property
    def count(self) -> int: ...
    @property
    def duration_sum(self) -> float: ...
    @property
    def duration_count(self) -> int: ...
    @property
    def buckets(self) -> list[int]: ...


class PollLike(Protocol):
    """What the agent hands its sinks at each poll (bpfscope.sinks.PollChanges)."""

    @property
    def flows(self) -> Sequence[FlowLike]: ...
    @property
    def events(self) -> Sequence[EventLike]: ...
    @property
    def self_metrics(self) -> dict[str, Any]: ...
    @property
    def tallies(self) -> Sequence[TallyLike] | None: ...


@dataclass
class _Histogram:
    bounds: tuple[float, ...] = DURATION_BUCKETS
    buckets: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        self.buckets = self.buckets or [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.buckets[i] += 1
                break
        else:
            self.buckets[-1] += 1
        self.count += 1
        self.total += value


class FlowMetrics(Collector):
    """Aggregates flows and events into Prometheus families."""

    def __init__(
        self,
        *,
        labels: str = "default",
        max_series: int = 10_000,
        remote_class: Any = None,
    ) -> None:
        if labels not in LABEL_SETS:
            raise ValueError(f"unknown label set {labels!r} (one of: {', '.join(LABEL_SETS)})")
        self.label_names = LABEL_SETS[labels]
        self.max_series = max_series
        self._remote_class = remote_class or (lambda ip: "unknown")
        self._self: dict[str, Any] | None = None  # the agent's own, from the last poll
        self._lock = threading.Lock()
        # (metric, labels) -> value
        self._counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self._hist: dict[tuple[str, ...], _Histogram] = {}
        # smoothed RTT of TCP flows, by remote class only: bounded by design
        self._rtt: dict[str, _Histogram] = {}
        self.series_dropped = 0
        # events lost per source as of the scrape (the agent's live figures;
        # else those of the last poll)
        self.live_drops: Callable[[], dict[str, int]] | None = None
        self._classes: dict[str | None, str] = {}  # remote class per address, this poll

    def _labels(
        self,
        comm: str,
        container: str | None,
        raddr: str | None,
        rport: int | None,
        direction: str | None = None,
    ) -> tuple[str, ...]:
        # the remote port of a connection we accepted is the client's
        # ephemeral port: never a label (one series per connection)
        values = {
            "container": container or "",
            "comm": comm,
            "remote_class": self._class_of(raddr),
            "remote_addr": raddr or "",
            "remote_port": "" if rport is None or direction == "passive" else str(rport),
        }
        return tuple(values[n] for n in self.label_names)

    def _class_of(self, raddr: str | None) -> str:
        cls = self._classes.get(raddr)
        if cls is None:
            cls = self._classes[raddr] = str(self._remote_class(raddr))
        return cls

    def _series_count(self) -> int:
        return len(self._counters) + len(self._hist)

    def _admit(self, exists: bool) -> bool:
        """A new series only while under the cap; what the cap refuses is counted."""
        if exists or self._series_count() < self.max_series:
            return True
        self.series_dropped += 1
        return False

    def _add(self, metric: str, labels: tuple[str, ...], value: float) -> None:
        key = (metric, labels)
        if self._admit(key in self._counters):
            self._counters[key] = self._counters.get(key, 0) + value

    def consume(self, changes: PollLike) -> None:
        """A sink of the agent: this poll's flows and events, and the
        agent's own figures (shown until the next poll)."""
        self._classes.clear()  # one poll's worth: names may change between polls
        tallies = changes.tallies
        if tallies is None:
            self.ingest(changes.flows, changes.events)
        else:  # events counted per group by the collector: exact at any rate
            self.ingest(changes.flows, ())
            self.ingest_tallies(tallies)
        with self._lock:
            self._self = changes.self_metrics

    def ingest_tallies(self, tallies: Iterable[TallyLike]) -> None:
        with self._lock:
            for t in tallies:
                port = None if t.direction == "passive" else t.port
                labels = self._labels(t.comm, t.container, t.raddr, port, t.direction)
                if t.type == "retransmit":
                    self._add("tcp_retransmits", labels, t.count)
                elif t.type in ("reset_sent", "reset_received"):
                    self._add("tcp_resets", (*labels, t.type.removeprefix("reset_")), t.count)
                elif t.type == "open":
                    self._add(
                        "tcp_connections_opened", (*labels, t.direction or "unknown"), t.count
                    )
                elif t.type == "close":
                    self._add("tcp_connections_closed", labels, t.count)
                    if t.duration_count and self._admit(labels in self._hist):
                        h = self._hist.setdefault(labels, _Histogram())
                        h.buckets = [a + b for a, b in zip(h.buckets, t.buckets, strict=True)]
                        h.count += t.duration_count
                        h.total += t.duration_sum

    def ingest(self, flows: Iterable[FlowLike], events: Iterable[EventLike]) -> None:
        with self._lock:
            for f in flows:
                if not (f.tx_delta or f.rx_delta):
                    continue
                labels = self._labels(f.comm, f.container, f.raddr, f.rport, f.direction)
                proto = f.proto if f.proto in ("tcp", "udp") else "other"
                if f.tx_delta:
                    self._add(f"{proto}_sent_bytes", labels, f.tx_delta)
                if f.rx_delta:
                    self._add(f"{proto}_received_bytes", labels, f.rx_delta)
                # TCP on the counters path (else 0)
                if f.tx_segs_delta:
                    self._add("tcp_sent_segments", labels, f.tx_segs_delta)
                if f.rx_segs_delta:
                    self._add("tcp_received_segments", labels, f.rx_segs_delta)
                if f.retrans_bytes_delta:
                    self._add("tcp_retransmitted_bytes", labels, f.retrans_bytes_delta)
                # one RTT observation per TCP flow per poll in which it moved data
                rtt = f.rtt_us
                if proto == "tcp" and rtt is not None:
                    cls = str(self._remote_class(f.raddr))
                    self._rtt.setdefault(cls, _Histogram(RTT_BUCKETS)).observe(rtt / 1e6)
            for e in events:
                labels = self._labels(e.comm, e.container, e.raddr, e.rport, e.direction)
                if e.type == "retransmit":
                    self._add("tcp_retransmits", labels, 1)
                elif e.type in ("reset_sent", "reset_received"):
                    self._add("tcp_resets", (*labels, e.type.removeprefix("reset_")), 1)
                elif e.type == "open":
                    self._add("tcp_connections_opened", (*labels, e.direction or "unknown"), 1)
                elif e.type == "close":
                    self._add("tcp_connections_closed", labels, 1)
                    if e.duration is not None and self._admit(labels in self._hist):
                        self._hist.setdefault(labels, _Histogram()).observe(e.duration)

    # -- exposition ----------------------------------------------------------

    _COUNTER_HELP: Final = {
        "tcp_sent_bytes": "Bytes sent on TCP flows.",
        "tcp_received_bytes": "Bytes received on TCP flows.",
        "udp_sent_bytes": "Bytes sent on UDP flows.",
        "udp_received_bytes": "Bytes received on UDP flows.",
        "tcp_retransmits": "TCP segments retransmitted.",
        "tcp_sent_segments": "TCP data segments sent, retransmissions included.",
        "tcp_received_segments": "TCP data segments received.",
        "tcp_retransmitted_bytes": "TCP payload bytes retransmitted (not in tcp_sent_bytes).",
        "tcp_resets": "TCP resets, by who sent them (sent: this host).",
        "tcp_connections_opened": (
            "TCP connections established, by direction (active: connect, passive: accept)."
        ),
        "tcp_connections_closed": "TCP connections closed.",
    }
    _EXTRA_LABEL: Final = {"tcp_resets": "direction", "tcp_connections_opened": "direction"}

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counters = dict(self._counters)
            hist = {k: (list(v.buckets), v.count, v.total) for k, v in self._hist.items()}
            rtt = {k: (list(v.buckets), v.total) for k, v in self._rtt.items()}
            dropped = self.series_dropped
            own = self._self
        if own is not None and self.live_drops is not None:
            own = {**own, "events_dropped": self.live_drops()}
        names = list(self.label_names)
        for metric, help_text in self._COUNTER_HELP.items():
            extra = self._EXTRA_LABEL.get(metric)
            fam = CounterMetricFamily(
                f"bpfscope_{metric}", help_text, labels=names + ([extra] if extra else [])
            )
            for (m, labels), value in counters.items():
                if m == metric:
                    fam.add_metric(list(labels), value)
            yield fam
        h = HistogramMetricFamily(
            "bpfscope_tcp_connection_duration_seconds",
            "Lifetime of closed TCP connections.",
            labels=names,
        )
        for labels, (buckets, _count, total) in hist.items():
            h.add_metric(list(labels), _cumulative(DURATION_BUCKETS, buckets), total)
        yield h
        rtt_fam = HistogramMetricFamily(
            "bpfscope_tcp_rtt_seconds",
            "Smoothed RTT of TCP flows (the kernel's srtt), one observation per flow "
            "per poll in which it moved data, by remote address class.",
            labels=["remote_class"],
        )
        for cls, (buckets, total) in rtt.items():
            rtt_fam.add_metric([cls], _cumulative(RTT_BUCKETS, buckets), total)
        yield rtt_fam
        dropped_fam = CounterMetricFamily(
            "bpfscope_metrics_series_dropped",
            "Samples not exported because the series cap was reached (--max-series).",
        )
        dropped_fam.add_metric([], dropped)
        yield dropped_fam
        if own is not None:
            yield from _self_families(own)


def _cumulative(bounds: tuple[float, ...], buckets: list[int]) -> list[tuple[str, float]]:
    out, running = [], 0
    for bound, n in zip((*bounds, float("inf")), buckets, strict=True):
        running += n
        out.append((_bound(bound), float(running)))
    return out


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(b)


def _self_families(data: dict[str, Any]) -> Iterator[Metric]:
    """bpfscope's own cost and health, from the agent."""
    runs = CounterMetricFamily(
        "bpfscope_bpf_program_runs", "Runs of bpfscope's BPF programs.", labels=["program", "rung"]
    )
    secs = CounterMetricFamily(
        "bpfscope_bpf_program_run_seconds",
        "Time spent in bpfscope's BPF programs (needs run-time stats on).",
        labels=["program", "rung"],
    )
    for p in data.get("programs", []):
        runs.add_metric([p["program"], p["rung"]], p["run_cnt"])
        secs.add_metric([p["program"], p["rung"]], p["run_time_ns"] / 1e9)
    yield runs
    yield secs
    dropped = CounterMetricFamily(
        "bpfscope_events_dropped", "Events the kernel could not hand over.", labels=["source"]
    )
    for source, n in data.get("events_dropped", {}).items():
        dropped.add_metric([source], n)
    yield dropped
    entries = GaugeMetricFamily(
        "bpfscope_map_entries", "Entries in bpfscope's maps.", labels=["map"]
    )
    for name, n in data.get("map_entries", {}).items():
        entries.add_metric([name], n)
    yield entries
    up = GaugeMetricFamily(
        "bpfscope_collector_up", "1 while a collector is running.", labels=["collector"]
    )
    for name, alive in data.get("collectors", {}).items():
        up.add_metric([name], 1 if alive else 0)
    yield up


class PollTimingSource(Protocol):
    def poll_timing(self) -> dict[str, dict[str, Any]]: ...


class PollTimingMetrics(Collector):
    """How long the agent's polls take and how late they are, as of the
    scrape: bpfscope_collector_poll_duration_seconds (histogram) and
    bpfscope_collector_lag_seconds (seconds the next poll is overdue)."""

    def __init__(self, source: PollTimingSource, buckets: Sequence[float]) -> None:
        self._source = source
        self._bounds = tuple(buckets)

    def collect(self) -> Iterator[Metric]:
        timing = self._source.poll_timing()
        hist = HistogramMetricFamily(
            "bpfscope_collector_poll_duration_seconds",
            "Time one poll of a collector took (drain, decode, sinks).",
            labels=["collector"],
        )
        lag = GaugeMetricFamily(
            "bpfscope_collector_lag_seconds",
            "Seconds since a collector's last completed poll, beyond one interval.",
            labels=["collector"],
        )
        for name, t in sorted(timing.items()):
            cumulative, running = [], 0
            for bound, n in zip((*self._bounds, float("inf")), t["buckets"], strict=True):
                running += n
                cumulative.append((_bound(bound), running))
            hist.add_metric([name], cumulative, t["sum"])
            lag.add_metric([name], t["lag_seconds"])
        yield hist
        yield lag


# Log2 slot i of the syscall tracer holds latencies in [2^i, 2^(i+1)) ns.
# Exported buckets are every other power of two from 1 µs to ~17 s, so each
# slot falls wholly under one bucket: no interpolation, no invented counts.
SYSCALL_LE_EXPONENTS: Final = tuple(range(10, 35, 2))


class SyscallTotalsSource(Protocol):
    def syscall_view(self) -> tuple[Any, Any]: ...


class SyscallMetrics(Collector):
    """bpfscope_syscalls_total, _errors_total and (``latency=True``: the
    collector times calls) the latency histogram, from the syscall
    collector's cumulative totals (one series per syscall, and per syscall
    and errno: bounded by the kernel's syscall table)."""

    def __init__(self, source: SyscallTotalsSource, *, latency: bool = False) -> None:
        self._source = source
        self.latency = latency

    def collect(self) -> Iterator[Metric]:
        _, totals = self._source.syscall_view()
        calls = CounterMetricFamily(
            "bpfscope_syscalls", "System calls made, by syscall.", labels=["syscall"]
        )
        errors = CounterMetricFamily(
            "bpfscope_syscall_errors",
            "System calls that returned an error, by syscall and errno.",
            labels=["syscall", "errno"],
        )
        if totals is not None:
            for name, n in sorted(totals.count.items()):
                calls.add_metric([name], n)
            for (name, errno_name), n in sorted(totals.errors.items()):
                errors.add_metric([name, errno_name], n)
        yield calls
        yield errors
        if not self.latency:
            return
        latency = HistogramMetricFamily(
            "bpfscope_syscall_latency_seconds",
            "Time from syscall entry to exit.",
            labels=["syscall"],
        )
        if totals is not None:
            for name, slots in sorted(totals.hist.items()):
                latency.add_metric([name], _log2_buckets(slots), totals.total_ns.get(name, 0) / 1e9)
        yield latency


def _log2_buckets(slots: list[int]) -> list[tuple[str, float]]:
    cumulative: list[tuple[str, float]] = []
    running = 0
    i = 0
    for exp in SYSCALL_LE_EXPONENTS:
        while i < len(slots) and i + 1 <= exp:  # slot i ends at 2^(i+1) <= 2^exp
            running += slots[i]
            i += 1
        cumulative.append((repr(2**exp / 1e9), running))
    cumulative.append(("+Inf", running + sum(slots[i:])))
    return cumulative


class DropTotalsSource(Protocol):
    def drop_view(self) -> tuple[Any, dict[tuple[str, str], int]]: ...


class DropMetrics(Collector):
    """bpfscope_packet_drops_total{reason,protocol}: cumulative packet drops
    from the drop collector. Bounded: reason is the kernel's drop-reason
    enum (or UNKNOWN where the kernel gives none), protocol one of a fixed
    set (drops.records.PROTOCOL_LABELS); never addresses or ports."""

    def __init__(self, source: DropTotalsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        _, totals = self._source.drop_view()
        drops = CounterMetricFamily(
            "bpfscope_packet_drops",
            "Packets the kernel dropped (skb:kfree_skb), by drop reason and protocol.",
            labels=["reason", "protocol"],
        )
        for (reason, protocol), n in sorted(totals.items()):
            drops.add_metric([reason, protocol], n)
        yield drops
