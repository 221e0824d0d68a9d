"""Flow monitor without privileges: struct mirrors against the object's BTF,
key/event decoding, attribution parsing, rendering, CLI validation, ladder."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from bpfscope import libbpf as bpf
from bpfscope.bench.references import flows_nop_hooks
from bpfscope.cli import cli
from bpfscope.features import Mechanism, Status, Verdict
from bpfscope.flows import programs
from bpfscope.flows.attribution import Attribution, parse_cgroup_path
from bpfscope.flows.cli import build_options
from bpfscope.flows.records import (
    MIRRORS,
    ConnEvent,
    FlowEventC,
    FlowKeyC,
    FlowRecord,
    decode_key,
)
from bpfscope.flows.render import event_line, human_bytes, plain_table
from bpfscope.ladder import Choice, choose
from bpfscope.objects import object_path


def ctypes_layout(st: type[ctypes.Structure]) -> tuple[int, dict[str, tuple[int, int]]]:
    fields = {}
    for name, *_rest in st._fields_:
        desc = getattr(st, name)
        fields[name] = (desc.offset, desc.size)
    return ctypes.sizeof(st), fields


@pytest.mark.parametrize("name", sorted(MIRRORS))
def test_flows_structs_match_object_btf(name: str) -> None:
    with bpf.Btf.from_file(object_path("flows")) as btf:
        assert ctypes_layout(MIRRORS[name]) == btf.struct_layout(name)


def _key(**kw: object) -> bytes:
    k = FlowKeyC()
    for name, value in kw.items():
        if name in ("laddr", "raddr"):
            assert isinstance(value, bytes)
            ctypes.memmove(getattr(k, name), value, len(value))
        else:
            setattr(k, name, value)
    return bytes(k)


def test_decode_key_ipv4_ipv6_and_unknown_remote() -> None:
    v4 = decode_key(
        _key(
            tgid=42,
            cgroup_id=7,
            netns=99,
            family=socket.AF_INET,
            proto=6,
            laddr=socket.inet_aton("10.1.2.3"),
            raddr=socket.inet_aton("10.9.8.7"),
            lport=5000,
            rport=443,
        )
    )
    assert (v4.pid, v4.family, v4.proto, v4.local, v4.remote) == (
        42,
        "ipv4",
        "tcp",
        "10.1.2.3:5000",
        "10.9.8.7:443",
    )
    v6 = decode_key(
        _key(
            family=socket.AF_INET6,
            proto=17,
            laddr=socket.inet_pton(socket.AF_INET6, "fd00::1"),
            raddr=socket.inet_pton(socket.AF_INET6, "fd00::2"),
            lport=1,
            rport=53,
        )
    )
    assert (v6.proto, v6.local, v6.remote) == ("udp", "[fd00::1]:1", "[fd00::2]:53")
    unknown = decode_key(_key(family=socket.AF_INET, proto=17, flags=1, lport=9))
    assert unknown.raddr is None
    assert unknown.rport is None
    assert unknown.remote == "?"


def test_decode_close_event() -> None:
    e = FlowEventC(
        ts_ns=2_000_000_000,
        tgid=5,
        type=2,
        direction=2,
        family=socket.AF_INET,
        proto=6,
        duration_ns=1_500_000_000,
        tx_bytes=10,
        rx_bytes=20,
        retrans=3,
        established=1,
        oldstate=9,
        newstate=7,
        lport=80,
        rport=5555,
        comm=b"nginx",
    )
    ctypes.memmove(e.laddr, socket.inet_aton("127.0.0.1"), 4)
    ctypes.memmove(e.raddr, socket.inet_aton("127.0.0.2"), 4)
    ev = ConnEvent.decode(bytes(e), wall_offset=100.0)
    assert ev.time == pytest.approx(102.0)
    assert (ev.type, ev.direction, ev.duration, ev.tx_bytes, ev.rx_bytes, ev.retransmits) == (
        "close",
        "passive",
        1.5,
        10,
        20,
        3,
    )
    assert (ev.oldstate, ev.newstate, ev.comm, ev.remote) == (
        "LAST_ACK",
        "CLOSE",
        "nginx",
        "127.0.0.2:5555",
    )
    assert "close" in event_line(ev)
    assert "passive" in event_line(ev)
    json.dumps(ev.to_json())
    # an open event carries no byte counts
    e.type = 1
    assert ConnEvent.decode(bytes(e), 0).tx_bytes is None


H = "a" * 64


@pytest.mark.parametrize(
    ("path", "container", "runtime", "pod", "unit"),
    [
        (f"/system.slice/docker-{H}.scope", H, "docker", None, None),
        (f"/docker/{H}", H, "docker", None, None),
        (
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234abcd_1111_2222_"
            f"3333_444455556666.slice/cri-containerd-{H}.scope",
            H,
            "containerd",
            "1234abcd-1111-2222-3333-444455556666",
            None,
        ),
        (
            f"/kubepods/besteffort/pod1234abcd-1111-2222-3333-444455556666/{H}",
            H,
            "kubernetes",
            "1234abcd-1111-2222-3333-444455556666",
            None,
        ),
        (f"/machine.slice/libpod-{H}.scope/container", H, "podman", None, None),
        (f"/kubepods.slice/crio-{H}.scope", H, "cri-o", None, None),
        ("/system.slice/nginx.service", None, None, None, "nginx.service"),
        ("/user.slice/user-1000.slice/session-2.scope", None, None, None, "session-2.scope"),
        ("/", None, None, None, None),
    ],
)
def test_parse_cgroup_path(
    path: str, container: str | None, runtime: str | None, pod: str | None, unit: str | None
) -> None:
    info = parse_cgroup_path(path)
    assert (info.container, info.runtime, info.pod_uid, info.unit) == (
        container,
        runtime,
        pod,
        unit,
    )


def test_attribution_resolves_by_pid_and_by_walk(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    (root / f"docker-{H}.scope").mkdir(parents=True)
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "77" / "comm").write_text("web\n")
    (proc / "77" / "cmdline").write_bytes(b"web\x00--port\x00" + b"8080\x00")
    (proc / "77" / "cgroup").write_text(f"0::/docker-{H}.scope\n")
    a = Attribution(cgroup_root=str(root), proc=str(proc))
    cid = os.stat(root / f"docker-{H}.scope").st_ino
    assert a.process(77).cmdline == "web --port 8080"
    assert a.cgroup(cid, 77).container == H
    b = Attribution(cgroup_root=str(root), proc=str(proc))
    assert b.cgroup(cid).path == f"/docker-{H}.scope"  # by walking, no pid
    assert b.cgroup(123456789).path is None
    # a process that has gone keeps the kernel's comm
    assert a.process(999, "gone").comm == "gone"


def _flow(**kw: object) -> FlowRecord:
    base: dict[str, object] = dict(
        pid=1,
        comm="c",
        cgroup_id=1,
        netns=1,
        family="ipv4",
        proto="tcp",
        laddr="10.0.0.1",
        lport=1000,
        raddr="10.0.0.2",
        rport=80,
    )
    base.update(kw)
    return FlowRecord(**base)  # type: ignore[arg-type]


def test_plain_table_and_bytes() -> None:
    assert human_bytes(1023) == "1023B"
    assert human_bytes(2048) == "2.0KiB"
    text = plain_table([_flow(tx_bytes=5000, first_seen=1.0, state="ESTABLISHED")], now=3.0)
    header, row = text.splitlines()
    assert header.split()[:3] == ["PID", "COMM", "CONTAINER"]
    assert "10.0.0.2:80" in row
    assert "4.9KiB" in row
    assert "2.0s" in row
    unknown = plain_table([_flow(proto="udp", raddr=None, rport=None)])
    assert " ? " in unknown


def test_build_options_validation() -> None:
    from bpfscope.errors import UserError

    with pytest.raises(UserError, match="invalid CIDR"):
        build_options(
            pid=None,
            comm=None,
            port=None,
            cidr="10.0.0.0/33",
            container=None,
            cgroup=None,
            ipv4=False,
            ipv6=False,
        )
    with pytest.raises(UserError, match="exclude"):
        build_options(
            pid=None,
            comm=None,
            port=None,
            cidr=None,
            container=None,
            cgroup=None,
            ipv4=True,
            ipv6=True,
        )
    opts = build_options(
        pid=None,
        comm="x",
        port=443,
        cidr="fd00::/8",
        container=None,
        cgroup=None,
        ipv4=False,
        ipv6=True,
        tcp=True,
    )
    assert opts.kernel.rodata() == {
        "filter_tgid": 0,
        "filter_cgroup": 0,
        "filter_port": 443,
        "filter_family": socket.AF_INET6,
    }
    assert opts.view.proto == "tcp"
    assert opts.view.family == "ipv6"


def test_cli_rejects_bad_cidr_with_one_line() -> None:
    result = CliRunner().invoke(cli, ["top", "--cidr", "300.1.1.1/8"])
    assert result.exit_code != 0
    assert "Traceback" not in (result.output or "")


def test_ladder_prefers_fexit_then_tracepoints() -> None:
    def verdict(m: Mechanism) -> Verdict:
        ok = m in (Mechanism.TP_BTF, Mechanism.RAW_TP, Mechanism.TRACEPOINT)
        return Verdict(m, Status.AVAILABLE if ok else Status.UNSUPPORTED, "test")

    chosen = {
        c.hook.name: c.mechanism
        for c in choose(programs.hooks(), verdict=verdict, missing=lambda r: None)
    }
    assert chosen["send"] is Mechanism.TP_BTF
    assert chosen["recv"] is Mechanism.TP_BTF
    assert chosen["state"] is Mechanism.TP_BTF
    everything = {
        c.hook.name: c.mechanism
        for c in choose(
            programs.hooks(),
            verdict=lambda m: Verdict(m, Status.AVAILABLE, "t"),
            missing=lambda r: None,
        )
    }
    assert everything["send"] is Mechanism.FEXIT
    assert everything["recv"] is Mechanism.FEXIT
    only_kprobe = {
        c.hook.name: c.mechanism
        for c in choose(
            programs.traffic_hooks(),
            verdict=lambda m: Verdict(
                m, Status.AVAILABLE if m is Mechanism.KPROBE else Status.UNSUPPORTED, "t"
            ),
            missing=lambda r: None,
        )
    }
    assert set(only_kprobe.values()) == {Mechanism.KPROBE}


def test_one_program_per_event_on_every_rung() -> None:
    """Two traffic hooks; a tracepoint rung is one program for every protocol,
    a function rung one program per kernel function, each function once."""
    traffic = {h.name: h for h in programs.traffic_hooks()}
    assert set(traffic) == {"send", "recv"}
    for hook in traffic.values():
        assert hook.required
        for rung in hook.rungs:
            targets = [t for _, t in ((rung.program, rung.target), *rung.companions)]
            assert len(targets) == len(set(targets)), rung
            if rung.mechanism in programs.TRACEPOINT_RUNGS:
                assert rung.companions == ()
                assert rung.target.endswith(f"sock_{hook.name}_length")
    send = {r.mechanism: r for r in traffic["send"].rungs}
    assert [t for _, t in send[Mechanism.FEXIT].companions] == ["udp_sendmsg", "udpv6_sendmsg"]
    assert send[Mechanism.FEXIT].target == "tcp_sendmsg"
    recv = {r.mechanism: r for r in traffic["recv"].rungs}
    assert recv[Mechanism.KPROBE].programs == (
        "tcp_recv_kprobe",
        "tcp_recv_start_kprobe",
        "udp_recv_kprobe",
    )


def test_function_rung_needs_every_function() -> None:
    """No udpv6_sendmsg (IPv6 absent): the whole fexit rung is unusable, so
    the hook moves to tp_btf, which sees IPv6 too, instead of losing it."""
    chosen = choose(
        programs.traffic_hooks(),
        verdict=lambda m: Verdict(m, Status.AVAILABLE, "t"),
        missing=lambda r: next(
            ("no udpv6" for p in r.parts() if p.target.startswith("udpv6")), None
        ),
    )
    by_hook = {c.hook.name: c for c in chosen}
    assert by_hook["send"].mechanism is Mechanism.TP_BTF
    assert by_hook["recv"].mechanism is Mechanism.TP_BTF
    assert by_hook["send"].skipped[0][0].mechanism is Mechanism.FEXIT


def test_every_rung_program_exists_in_the_object() -> None:
    with bpf.BpfObject.open_file(object_path("flows")) as obj:
        names = set(obj.programs)
    for hook in programs.hooks():
        for rung in hook.rungs:
            for program in rung.programs:
                assert program in names, rung
    # no program left behind that no rung, the counters path or the
    # benchmark's floor uses
    hooks = programs.hooks() + flows_nop_hooks()
    used = {p for hook in hooks for rung in hook.rungs for p in rung.programs}
    assert names == used | {programs.COUNTERS_ITER, programs.SWEEP_ITER}


def _choices(**mechanisms: Mechanism) -> list[Choice]:
    by_name = {h.name: h for h in programs.hooks()}
    return [
        Choice(by_name[name], next(r for r in by_name[name].rungs if r.mechanism is m), ())
        for name, m in mechanisms.items()
    ]


def test_counters_extras_and_the_accept_hook_without_syscall_tracepoints() -> None:
    """The accept hook stands on function rungs only: any syscall tracepoint
    would slow every syscall of every task on the host."""
    base = _choices(state=Mechanism.TP_BTF, destroy=Mechanism.TP_BTF)
    extras = programs.tcp_counters(base)
    assert extras.programs == {programs.COUNTERS_ITER, programs.SWEEP_ITER}
    assert extras.rodata == {"tcp_counters": 1}
    (accept,) = programs.accept_hooks()
    assert not accept.required
    assert {r.mechanism for r in accept.rungs} == {Mechanism.FEXIT, Mechanism.KRETPROBE}
    for hook in programs.hooks():
        for rung in hook.rungs:
            for part in rung.parts():
                assert not part.target.startswith(("syscalls:", "raw_syscalls:")), part


def test_udp_hooks_on_the_counters_path_run_no_tcp_program() -> None:
    """The function rungs of UDP-only hooks carry no TCP program; the
    tracepoint rungs are the shared ones (their program skips TCP)."""
    for hook in programs.udp_traffic_hooks():
        for rung in hook.rungs:
            if rung.mechanism in (Mechanism.FEXIT, Mechanism.KPROBE):
                assert not [p for p in rung.programs if p.startswith("tcp_")], rung
                assert all(p.startswith("udp") for p in rung.programs), rung
    names = {h.name for h in programs.counters_hooks(udp=False)}
    assert names == {"state", "retransmit", "send_reset", "receive_reset", "destroy", "accept"}
    assert {"send", "recv"} <= {h.name for h in programs.counters_hooks(udp=True)}


def test_value_layout_constant_matches() -> None:
    from bpfscope.flows.collector import _VALUE
    from bpfscope.flows.records import FlowValueC

    assert _VALUE.size == ctypes.sizeof(FlowValueC)
    v = FlowValueC(
        tx_bytes=1, rx_bytes=2, retrans_bytes=5, retrans=3, state=7, direction=1, comm=b"abc"
    )
    fields = _VALUE.unpack(bytes(v))
    assert fields[0] == 1
    assert fields[1] == 2
    assert fields[8] == 5
    assert fields[9] == 3
    assert fields[12] == 7
    assert fields[14].rstrip(b"\0") == b"abc"
    assert struct.calcsize("=I") == 4


def test_peer_column_shows_name_or_class() -> None:
    from bpfscope.flows.render import COLUMNS

    text = plain_table(
        [_flow(), _flow(raddr=None, rport=None, proto="udp")],
        now=3.0,
        peer=lambda ip: "db.internal" if ip == "10.0.0.2" else "unknown",
    )
    header, known, unknown = text.splitlines()
    assert "PEER" in header.split()
    assert COLUMNS.index("PEER") == COLUMNS.index("REMOTE") + 1
    assert "db.internal" in known
    assert "unknown" in unknown


def test_close_event_carries_segments_only_on_the_counters_path() -> None:
    from bpfscope.flows.records import ConnEvent, FlowEventC

    e = FlowEventC(
        type=2, family=2, tx_bytes=1000, rx_bytes=10, tx_segs=3, rx_segs=1, retrans_bytes=7
    )
    counted = ConnEvent.decode(bytes(e), 0.0, counters=True)
    assert (counted.tx_bytes, counted.tx_segs, counted.rx_segs, counted.retrans_bytes) == (
        1000,
        3,
        1,
        7,
    )
    table = ConnEvent.decode(bytes(e), 0.0)
    assert (table.tx_bytes, table.tx_segs, table.retrans_bytes) == (1000, None, None)
    opened = ConnEvent.decode(bytes(FlowEventC(type=1, family=2, tx_segs=3)), 0.0, counters=True)
    assert opened.tx_segs is None
