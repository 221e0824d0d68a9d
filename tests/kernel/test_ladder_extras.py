"""load_object's extras on the real kernel: rung-dependent settings and
programs are loaded with the tool, and a kernel that refuses them gets the
same rungs without them (never a lost tool)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bpfscope import features
from bpfscope.features import Mechanism
from bpfscope.flows import programs
from bpfscope.ladder import Choice, Extras, load_object
from bpfscope.libbpf import ENOTSUPP
from kernel_require import require

pytestmark = pytest.mark.kernel


def test_extras_are_loaded_with_the_tool() -> None:
    require("tp_btf")
    seen = []

    def extras(choices: Sequence[Choice]) -> Extras:
        seen.append(choices)
        return programs.socket_accounting(choices)

    hooks = programs.traffic_hooks() + programs.lifecycle_hooks()
    with load_object(programs.OBJECT, hooks, extras=extras) as attached:
        assert len(seen) == 1
        assert attached.extras == programs.socket_accounting(attached.choices)
        if attached.extras.programs:
            assert attached.obj.rodata["sk_acct_enabled"] == b"\x01"
            assert attached.obj.program(programs.FOLD_PROGRAM).fd > 0


def test_refused_extras_fall_back_to_the_same_rungs_without_them() -> None:
    require("tp_btf")
    # an fexit program as the extra: refused where trampolines are (EPERM here)
    extra = Extras(rodata={"sk_acct_enabled": 1}, programs=frozenset({"tcp_send_fexit"}))
    fexit = features.probe(Mechanism.FEXIT)
    # arm64 before 6.4 loads fexit programs and refuses only to attach them
    # (ENOTSUPP): an extra is loaded, not attached, so it is kept there.
    loads_fexit = fexit.available or fexit.errno == ENOTSUPP
    with load_object(programs.OBJECT, programs.traffic_hooks(), extras=lambda _: extra) as attached:
        rungs = attached.rungs()
        if loads_fexit:
            assert attached.extras == extra
        else:
            assert attached.extras == Extras()
            assert attached.obj.rodata["sk_acct_enabled"] == b"\x00"
        # the hooks themselves kept their first usable rung
        assert rungs["send"] == rungs["recv"]
        assert rungs["send"] is not None


def test_skipped_runs_come_from_the_kernel_per_program() -> None:
    """The kernel's recursion-miss counters of the attached programs: 0 on
    ordinary traffic (these hooks never nest), and readable for every one."""
    require("tp_btf")
    with load_object(
        programs.OBJECT, programs.traffic_hooks() + programs.lifecycle_hooks()
    ) as attached:
        names = [p.program for c in attached.choices if c.rung for p in c.rung.parts()]
        assert names
        assert all(attached.obj.program(p).info().recursion_misses == 0 for p in names)
        assert attached.skipped_runs() == 0
