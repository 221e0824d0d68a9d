"""HTTP views of the agent: a read-only JSON API and /metrics.

Every endpoint is a GET that reads what the agent already published;
nothing received here loads, changes or detaches BPF programs. An optional
bearer token protects /api (and /metrics when asked). Validation errors are
4xx JSON with a message; unexpected errors are a 500 with no stack trace.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from . import __version__
from .agent import POLL_BUCKETS, Agent
from .flowgroup import GROUP_KEYS, group_flows, sort_groups
from .flowquery import (
    MAX_PID,
    BadQuery,
    FlowFilter,
    page,
    sort_flows,
)
from .liveness import liveness
from .metrics import DropMetrics, PollTimingMetrics, SyscallMetrics
from .store import HistoryQuery
from .syscalls.aggregate import aggregate, aggregate_errnos, grouped_json, top
from .sysnames import UnknownSyscall, syscall_nr
from .web import mount_web
from .web.apidocs import mount_api_docs

__all__ = ["MAX_PAGE", "create_app"]

log = logging.getLogger("bpfscope.server")

MAX_PAGE: Final = 1000
MAX_QUERY_BYTES: Final = 4096
VIEW_CACHE_SIZE: Final = 16


# Times beyond year 5138 (or further back than that) are mistakes, and
# would overflow SQLite's 64-bit integers.
MAX_UNIX_TIME: Final = 1e11
MAX_SEQ: Final = 2**63 - 1

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"page size, at most {MAX_PAGE}")]
Port = Annotated[int | None, Query(ge=1, le=65535, description="local or remote port")]
Pid = Annotated[int | None, Query(ge=1, le=MAX_PID, description="process id")]
Comm = Annotated[str | None, Query(max_length=64, description="exact command name")]
Cidr = Annotated[
    str | None,
    Query(max_length=64, description="local or remote address in this network (IPv4-mapped "
          "IPv6 addresses count as IPv4)"),
]  # fmt: skip
Container = Annotated[str | None, Query(max_length=128, description="container id prefix")]
Family = Annotated[str | None, Query(pattern="^(ipv4|ipv6)$")]
Protocol = Annotated[str | None, Query(pattern="^(tcp|udp)$")]
Time = Annotated[
    float | None,
    Query(
        ge=-MAX_UNIX_TIME,
        le=MAX_UNIX_TIME,
        allow_inf_nan=False,
        description="Unix seconds, or negative: seconds ago",
    ),
]
Seq = Annotated[int, Query(ge=0, le=MAX_SEQ, description="only events with seq > after")]


def flow_filter(
    pid: Pid = None,
    comm: Comm = None,
    port: Port = None,
    cidr: Cidr = None,
    container: Container = None,
    family: Family = None,
    protocol: Protocol = None,
) -> FlowFilter:
    """The filter parameters every flow and connection endpoint takes, with
    the meaning FlowFilter gives them (the CLI views use the same class)."""
    return FlowFilter(pid, comm, port, cidr, container, family, protocol)


Filter = Annotated[FlowFilter, Depends(flow_filter)]
GroupBy = Annotated[
    str | None,
    Query(
        pattern=f"^({'|'.join(GROUP_KEYS)})$",
        description="one row per group: connections, bytes and rates each way",
    ),
]
EventType = Annotated[
    str | None, Query(pattern="^(open|close|retransmit|reset_sent|reset_received)$")
]


def _query_names(dependant: Dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _flow_json(rec: Any, agent: Agent) -> dict[str, Any]:
    data: dict[str, Any] = rec.to_json()
    if agent.profiler is not None:
        data["remote_profile"] = agent.profiler.profile(rec.raddr).to_json()
    return data


def _event_json(seq: int, event: Any, agent: Agent) -> dict[str, Any]:
    data: dict[str, Any] = {"seq": seq, **event.to_json()}
    if agent.profiler is not None:
        data["remote_profile"] = agent.profiler.profile(event.raddr).to_json()
    return data


def _drops_response(agent: Agent, flt: FlowFilter, reasons: list[str], limit: int) -> Response:
    from .drops.cli import reason_filter, select

    if agent.drops is None:
        return JSONResponse(
            {"detail": "the drop collector is off (the agent runs with --no-drops)"},
            status_code=404,
        )
    if not agent.drop_state.alive and agent.drop_state.polls == 0:
        return JSONResponse(
            {"detail": f"packet drops are not available: {agent.drop_state.error}"},
            status_code=503,
        )
    wanted = reason_filter(agent.drops.reasons, reasons)
    records, totals = agent.drop_view()
    chosen = select(records, flt, wanted)
    return JSONResponse(
        {
            "total": len(chosen),
            "items": [r.to_json() for r in chosen[:limit]],
            "totals": [
                {"reason": reason, "protocol": proto, "count": n}
                for (reason, proto), n in sorted(totals.items(), key=lambda kv: -kv[1])
                if not wanted or reason in wanted
            ],
        }
    )


def create_app(
    agent: Agent,
    *,
    token: str | None = None,
    protect_metrics: bool = False,
    registry: CollectorRegistry | None = None,
    stream_poll_seconds: float = 0.25,
) -> FastAPI:
    app = FastAPI(
        docs_url=None,  # web.apidocs serves /docs without a CDN
        redoc_url=None,
        title="bpfscope agent",
        version=__version__,
        description="Read-only API of the bpfscope eBPF agent: flows, connections, history, "
        "its own BPF programs and health.",
    )
    if registry is None:
        registry = CollectorRegistry()
        if agent.metrics is not None:
            registry.register(agent.metrics)
        if agent.syscalls is not None:
            registry.register(SyscallMetrics(agent, latency=agent.syscalls.latency))
        registry.register(PollTimingMetrics(agent, POLL_BUCKETS))
        if agent.drops is not None:
            registry.register(DropMetrics(agent))
        ProcessCollector(namespace="bpfscope", registry=registry)

    query_names: dict[str, set[str]] = {}

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), token)

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method not in ("GET", "HEAD"):
            return JSONResponse({"detail": "the bpfscope API is read-only"}, status_code=405)
        if len(request.url.query) > MAX_QUERY_BYTES:
            return JSONResponse({"detail": "query string too long"}, status_code=414)
        path = request.url.path
        protected = path.startswith("/api/") or (protect_metrics and path == "/metrics")
        if protected and not authorized(request):
            return JSONResponse(
                {"detail": "missing or wrong bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        valid = query_names.get(path)
        if valid is not None:
            # A misspelt or unsupported filter must not silently widen the answer.
            unknown = sorted(set(request.query_params) - valid)
            if unknown:
                return JSONResponse(
                    {
                        "detail": f"unknown query parameter{'s' if len(unknown) > 1 else ''} "
                        f"{', '.join(unknown)} for {path}; valid: "
                        f"{', '.join(sorted(valid)) or 'none'}"
                    },
                    status_code=400,
                )
        try:
            return await call_next(request)
        except Exception:  # never a stack trace to the client
            log.exception("request %s failed", path)
            return JSONResponse({"detail": "internal error; see the agent's log"}, status_code=500)

    @app.exception_handler(BadQuery)
    async def bad_query(_request: Request, exc: BadQuery) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'query')}: {e.get('msg')}"
            for e in exc.errors()
        ]
        return JSONResponse({"detail": "; ".join(problems)}, status_code=422)

    # Filtering and sorting 100k flows costs ~100 ms of CPU (and the GIL), so
    # each (filter, sort) result is computed once per collection interval.
    view_cache: OrderedDict[tuple[Any, ...], list[Any]] = OrderedDict()
    view_lock = threading.Lock()

    def selected_flows(flt: FlowFilter, sort: str, descending: bool) -> list[Any]:
        key = (agent.generation, flt, sort, descending)
        with view_lock:
            hit = view_cache.get(key)
        if hit is not None:
            return hit
        result = sort_flows(flt.apply(agent.current_flows()), sort, descending)
        with view_lock:
            view_cache[key] = result
            while len(view_cache) > VIEW_CACHE_SIZE:
                view_cache.popitem(last=False)
        return result

    @app.get("/api/v1/flows", summary="Current flows")
    def flows(
        flt: Filter,
        sort: str = "bytes",
        order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
        limit: Limit = 100,
        cursor: Annotated[str | None, Query(max_length=64)] = None,
        group_by: GroupBy = None,
    ) -> dict[str, Any]:
        if group_by is not None:
            peer = None
            if agent.profiler is not None:
                profiler = agent.profiler

                def peer(ip: str | None) -> str:
                    prof = profiler.profile(ip)
                    return prof.name or str(prof.remote_class)

            groups = sort_groups(
                group_flows(flt.apply(agent.current_flows()), group_by, peer),
                sort,
                order == "desc",
            )
            chunk, nxt = page(groups, cursor, limit)
            return {
                "group_by": group_by,
                "total": len(groups),
                "items": [g.to_json() for g in chunk],
                "next_cursor": nxt,
            }
        selected = selected_flows(flt, sort, order == "desc")
        items, nxt = page(selected, cursor, limit)
        return {
            "total": len(selected),
            "items": [_flow_json(r, agent) for r in items],
            "next_cursor": nxt,
        }

    @app.get("/api/v1/connections", summary="Recent TCP lifecycle events")
    def connections(
        flt: Filter,
        after: Seq = 0,
        type: EventType = None,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        match = flt.predicate()
        out = []
        for entry in agent.events_since(after):
            e = entry.event
            if type is not None and e.type != type:
                continue
            if not match(e):
                continue
            out.append(_event_json(entry.seq, e, agent))
        return {"last_seq": agent.last_seq, "items": out[-limit:]}

    # Set when the server begins to shut down (serve_cli): open event
    # streams (every open web view holds one) end, so shutdown never waits
    # for a browser tab to go away.
    stopping = threading.Event()
    app.state.stopping = stopping

    @app.get(
        "/api/v1/connections/stream",
        summary="Live lifecycle events (Server-Sent Events)",
        response_class=StreamingResponse,
    )
    async def stream(
        request: Request,
        flt: Filter,
        type: EventType = None,
        after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
        max_events: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    ) -> StreamingResponse:
        start = agent.last_seq if after is None else after
        match = flt.predicate()

        async def events() -> AsyncIterator[str]:
            seq, sent = start, 0
            yield f": bpfscope event stream from seq {seq}\n\n"
            while not (await request.is_disconnected() or stopping.is_set()):
                for entry in agent.events_since(seq):
                    seq = entry.seq
                    if (type is not None and entry.event.type != type) or not match(entry.event):
                        continue
                    payload = json.dumps(_event_json(entry.seq, entry.event, agent))
                    yield f"id: {entry.seq}\nevent: {entry.event.type}\ndata: {payload}\n\n"
                    sent += 1
                    if max_events is not None and sent >= max_events:
                        return
                await asyncio.sleep(stream_poll_seconds)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/api/v1/history", summary="Stored flow records by time range")
    def history(
        flt: Filter,
        since: Time = None,
        until: Time = None,
        limit: Limit = 100,
        group_by: GroupBy = None,
        step: Annotated[
            int | None,
            Query(
                ge=1,
                le=7 * 86400,
                description="a time series: totals per step seconds (whole buckets), "
                "oldest first, of the flows the filters select",
            ),
        ] = None,
        cursor: Annotated[str | None, Query(max_length=512)] = None,
    ) -> Response:
        if agent.store is None:
            return JSONResponse(
                {"detail": f"history is not available: {agent.store_error or 'disabled'}"},
                status_code=503,
            )
        if group_by is not None and step is not None:
            raise BadQuery("group_by and step exclude each other: filter to one group for a series")
        now = time.time()
        q = HistoryQuery(
            since=now + since if since is not None and since < 0 else since,
            until=now + until if until is not None and until < 0 else until,
            filter=flt,
            limit=limit,
            group_by=group_by,
            step=step,
        )
        got = agent.store.page(q, cursor)  # keyset paging: stable while the agent writes
        return JSONResponse(
            {"items": got.items, "count": len(got.items), "next_cursor": got.next_cursor}
        )

    @app.get(
        "/api/v1/syscalls", summary="Syscall counts and errors (latency with --syscall-latency)"
    )
    def syscalls(
        pid: Pid = None,
        comm: Comm = None,
        syscall: Annotated[str | None, Query(max_length=64)] = None,
        by: Annotated[str, Query(pattern="^(process|syscall|both)$")] = "both",
        sort: Annotated[str, Query(pattern="^(count|time|errors)$")] = "count",
        limit: Limit = 100,
    ) -> Response:
        if agent.syscalls is None:
            return JSONResponse(
                {"detail": "the syscall collector is off; start the agent with --syscalls"},
                status_code=404,
            )

        latency = bool(agent.syscalls.latency)
        if sort == "time" and not latency:
            raise BadQuery("sort=time needs latency: start the agent with --syscall-latency")
        if syscall is not None:
            try:
                syscall_nr(syscall)
            except UnknownSyscall as exc:
                raise BadQuery(str(exc)) from None
        snap, totals = agent.syscall_view()
        if snap is None or totals is None:
            return JSONResponse({"interval": None, "latency": latency, "items": [], "totals": {}})

        def keep(s: Any) -> bool:
            # pid and comm mean what they mean for flows (exact)
            return (
                (pid is None or s.tgid == pid)
                and (comm is None or s.comm == comm)
                and (syscall is None or s.syscall == syscall)
            )

        stats = [s for s in snap.stats if keep(s)]
        ranked = top(aggregate(stats, by), limit, sort)
        errnos = aggregate_errnos(
            (e for e in snap.errnos if keep(e)),
            by,
        )[:limit]
        return JSONResponse(
            {
                "time": snap.time,
                "interval_s": snap.elapsed_s,
                "mechanism": snap.mechanism,
                "by": by,
                "latency": latency,
                "items": [grouped_json(s.to_json(latency), by) for s in ranked],
                "errnos": [grouped_json(e.to_json(), by) for e in errnos],
                "totals": {
                    name: {"count": n}
                    | ({"total_ns": totals.total_ns.get(name, 0)} if latency else {})
                    for name, n in totals.count.items()
                    if syscall is None or name == syscall
                },
                "drops": snap.drops.to_json(),
            }
        )

    @app.get("/api/v1/drops", summary="Packet drops by reason, flow, interface")
    def drops(
        flt: Filter,
        reason: Annotated[
            list[str] | None, Query(max_length=64, description="drop reason (repeatable)")
        ] = None,
        limit: Limit = 100,
    ) -> Response:
        return _drops_response(agent, flt, reason or [], limit)

    @app.get("/api/v1/programs", summary="bpfscope's own BPF programs")
    def programs() -> dict[str, Any]:
        return {"bpf_stats": agent.bpf_stats, "items": agent.programs()}

    @app.get("/api/v1/health", summary="Hooks, rungs, drops, map fill, store state")
    def health() -> JSONResponse:
        data = agent.health()
        return JSONResponse(data, status_code=200 if data["ok"] else 503)

    @app.get("/api/v1/live", summary="Liveness: the process and its poll loop are alive")
    def live() -> JSONResponse:
        data = liveness(agent)
        return JSONResponse(data, status_code=200 if data["alive"] else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # The query parameters each /api route declares (its dependencies'
    # included); anything else is refused by the guard above.
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/api/"):
            query_names[route.path] = _query_names(route.dependant)
    # The web view at / reads the API above from the browser; its static
    # files carry no data, so they need no token (the API calls do).
    mount_web(app)
    mount_api_docs(app)
    return app
