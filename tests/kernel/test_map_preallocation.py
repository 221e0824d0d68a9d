"""Before Linux 6.1 a tracing program on a run-time allocated hash map loads
with a kernel WARN (a panic under panic_on_warn); there the ladder creates
those maps preallocated. Checked against what the kernel created."""

from __future__ import annotations

from bpfscope import libbpf as bpf
from bpfscope.ladder import preallocate_hash_maps
from bpfscope.libbpf.introspect import map_details_from_fd
from bpfscope.objects import object_bytes
from bpfscope.system import KernelInfo, tracing_may_allocate


def _created_flags(prealloc: bool) -> dict[str, int]:
    with bpf.BpfObject.open_bytes(object_bytes("flows"), name="flows") as obj:
        for prog in obj.programs.values():
            prog.autoload = False  # the maps alone: no program needs to load
        changed = preallocate_hash_maps(obj) if prealloc else []
        obj.load()
        flags = {n: map_details_from_fd(m.fd).map_flags for n, m in obj.maps.items()}
        assert not prealloc or changed
        return {n: flags[n] for n in (changed or flags)}


def test_run_time_allocated_maps_become_preallocated() -> None:
    as_built = _created_flags(prealloc=False)
    lazy = {n for n, f in as_built.items() if f & bpf.BPF_F_NO_PREALLOC}
    assert {"flows", "flow_socks"} <= lazy  # the flow monitor's tables grow with load
    fallback = _created_flags(prealloc=True)
    assert set(fallback) == lazy
    assert all(not f & bpf.BPF_F_NO_PREALLOC for f in fallback.values())


def test_only_kernels_before_6_1_need_it() -> None:
    assert not tracing_may_allocate(KernelInfo("5.10.0-32-amd64", "", "x86_64"))
    assert not tracing_may_allocate(KernelInfo("6.0.19", "", "x86_64"))
    assert tracing_may_allocate(KernelInfo("6.1.0-28-amd64", "", "x86_64"))
    assert tracing_may_allocate(KernelInfo("6.18.44-fc-v782", "", "x86_64"))
