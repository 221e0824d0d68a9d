"""Owners of dropping sockets found after the kernel counted them: the
flows collector's owner of the same flow, then the sweep (faked here: the
kernel tests run the real one)."""

from __future__ import annotations

from bpfscope.drops.owners import FlowOwners, resolve
from bpfscope.drops.records import DropRecord
from bpfscope.flows.records import FlowRecord


def Flow(  # noqa: N802 (reads as the record it makes)
    pid: int, comm: str, netns: int, proto: str, laddr: str, lport: int, raddr: str, rport: int
) -> FlowRecord:
    return FlowRecord(pid, comm, 0, netns, "ipv4", proto, laddr, lport, raddr, rport)


def drop(**kw: object) -> DropRecord:
    base: dict[str, object] = dict(
        reason="NETFILTER_DROP", reason_code=12, location="x", netns=7, ifindex=2, ifname="v",
        family="ipv4", proto="tcp", src="10.0.0.2", dst="10.0.0.1", sport=80, dport=40000,
        socket=True, local_is_src=True, pid=0, comm="", cgroup_id=0, delta=1, sock_ino=99,
    )  # fmt: skip
    base.update(kw)
    return DropRecord(**base)  # type: ignore[arg-type]


class FakeSweep:
    def __init__(self, owners: dict[int, tuple[int, str]]) -> None:
        self.owners = owners
        self.runs = 0

    def due(self, now: float) -> bool:
        return True

    def run(self) -> bool:
        self.runs += 1
        return True

    def owner(self, ino: int) -> tuple[int, str] | None:
        return self.owners.get(ino)


SERVER = Flow(500, "nginx", 7, "tcp", "10.0.0.2", 80, "10.0.0.1", 40000)


def test_a_drop_takes_its_flows_owner() -> None:
    r = drop()
    sweep = FakeSweep({99: (1, "other")})
    assert resolve([r], FlowOwners([SERVER]), sweep) == 0  # none left for the sweep
    assert (r.pid, r.comm, r.owner_from) == (500, "nginx", "flows")
    assert sweep.runs == 0
    assert r.to_json()["owner_from"] == "flows"


def test_only_the_same_netns_and_protocol_match() -> None:
    for other in (drop(netns=8), drop(proto="udp"), drop(sport=81, sock_ino=0)):
        resolve([other], FlowOwners([SERVER]), None)
        assert other.pid == 0, other


def test_an_unconnected_socket_matches_its_local_port_when_one_process_has_it() -> None:
    udp = Flow(600, "dnsd", 7, "udp", "10.0.0.2", 53, "10.0.0.9", 5353)
    r = drop(proto="udp", sport=53, dport=41000, dst="10.0.0.1")
    resolve([r], FlowOwners([udp]), None)
    assert (r.pid, r.owner_from) == (600, "flows")
    two = Flow(601, "dnsd2", 7, "udp", "10.0.0.2", 53, "10.0.0.8", 5353)
    r = drop(proto="udp", sport=53, dport=41000, dst="10.0.0.1")
    resolve([r], FlowOwners([udp, two]), None)
    assert r.pid == 0  # two owners of the port: neither is guessed


def test_the_sweep_names_the_rest_and_only_when_they_grew() -> None:
    grew, idle, gone = drop(sock_ino=1), drop(sock_ino=2, delta=0), drop(sock_ino=3)
    sweep = FakeSweep({1: (42, "recv"), 2: (43, "x")})
    assert resolve([grew, idle, gone], None, sweep) == 1
    assert (grew.pid, grew.comm, grew.owner_from) == (42, "recv", "sweep")
    assert idle.pid == 0  # not swept for: nothing new
    assert gone.pid == 0  # closed: nobody holds it any more
    assert sweep.runs == 1
    sweep.runs = 0
    resolve([drop(sock_ino=0), drop(socket=False)], None, sweep)
    assert sweep.runs == 0  # nothing a sweep could find


def test_the_flow_index_is_built_only_when_a_drop_waits() -> None:
    class Untouchable:
        def __iter__(self) -> object:
            raise AssertionError("the flows were indexed for nothing")

    owners = FlowOwners(Untouchable())  # type: ignore[arg-type]
    named = drop(pid=9, comm="known")
    assert resolve([named, drop(delta=0), drop(socket=False)], owners, None) == 0
    assert named.owner_from is None  # not ours to name: the kernel named it
