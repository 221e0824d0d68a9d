"""Liveness of the agent: what a liveness probe restarts it on.

Readiness is ``Agent.health()`` (``/api/v1/health``): 503 when a collector
died or its polls lag (degraded). Liveness (``/api/v1/live``) asks less:
the process and its poll loop are alive. An agent overloaded by connection
churn lags but lives; restarting it would lose its state and make the
overload worse, so the DaemonSet takes it out of the Service (readiness)
and leaves it running.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .agent import Agent

__all__ = ["LIVE_STALL_INTERVALS", "LIVE_STALL_SECONDS", "liveness"]

# Not alive when no poll completed for this long (or this many intervals,
# if more): a loop stuck for good, not one slowed down by load.
LIVE_STALL_SECONDS: Final = 120.0
LIVE_STALL_INTERVALS: Final = 30


def liveness(agent: Agent) -> dict[str, Any]:
    """Not alive: the flow collector died, the poll loop's thread is gone,
    or no poll completed for ``stall_seconds``."""
    thread = agent._thread
    loop_running = thread is not None and thread.is_alive()
    state = agent.state
    age = state.age()
    stall = max(LIVE_STALL_SECONDS, LIVE_STALL_INTERVALS * agent.interval)
    reasons = []
    if not state.alive:
        reasons.append(f"flow collector stopped: {state.error or 'not started'}")
    elif not loop_running:
        reasons.append("poll loop is not running")
    if age > stall:
        reasons.append(f"no poll completed for {age:.0f} s (limit {stall:.0f} s)")
    return {
        "alive": not reasons,
        "reasons": reasons,
        "last_poll_age_seconds": round(age, 3),
        "stall_seconds": stall,
        "uptime_seconds": round(time.time() - agent.started, 3),
    }
