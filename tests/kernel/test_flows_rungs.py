"""Every rung of every flows hook whose target exists on this kernel loads
and attaches, not only the rung the ladder would pick first. A rung whose
CO-RE relocation or tracepoint record does not fit this kernel (as the
``tcp_retransmit_skb`` tracepoint rung once did before 6.18) fails here
instead of only under ``--attach``."""

from __future__ import annotations

import pytest

from bpfscope.features import Mechanism
from bpfscope.flows import programs
from bpfscope.ladder import Hook, load_object, target_missing
from kernel_require import require

pytestmark = pytest.mark.kernel

MECHANISMS = sorted({r.mechanism for h in programs.hooks() for r in h.rungs}, key=str)


@pytest.mark.parametrize("mechanism", MECHANISMS, ids=str)
def test_every_existing_rung_loads_and_attaches(mechanism: Mechanism) -> None:
    require(str(mechanism))
    hooks: list[Hook] = []
    absent: list[str] = []
    for hook in programs.hooks():
        for rung in hook.rungs:
            if rung.mechanism is not mechanism:
                continue
            why = target_missing(rung)
            if why:
                absent.append(f"{hook.name}: {why}")
            else:
                # optional: the loader leaves out each program the kernel
                # refuses and loads the rest, so one run names every refusal
                hooks.append(Hook(hook.name, (rung,), required=False))
    if not hooks:
        pytest.skip(f"no flows hook has a {mechanism} target here: {'; '.join(absent)}")
    with load_object(programs.OBJECT, hooks) as attached:
        refused = [hook for hook, rung in attached.rungs().items() if rung is None]
        assert not refused, f"the kernel refused the {mechanism} rung of {', '.join(refused)}"
        assert attached.rungs() == {h.name: str(mechanism) for h in hooks}
