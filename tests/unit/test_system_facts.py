"""Parsing of /proc facts, with fake inputs."""

from __future__ import annotations

from pathlib import Path

from bpfscope import system


def caps(*names: str) -> int:
    mask = 0
    for n in names:
        mask |= 1 << system.CAPABILITIES[n]
    return mask


def test_missing_caps_names_each_missing_capability() -> None:
    assert system.missing_caps(caps()) == list(system.REQUIRED_CAPS)
    assert system.missing_caps(caps(*system.REQUIRED_CAPS)) == []
    assert system.missing_caps(caps("CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_RESOURCE")) == [
        "CAP_PERFMON"
    ]


def test_sys_admin_stands_in_for_bpf_and_perfmon() -> None:
    assert system.missing_caps(caps("CAP_SYS_ADMIN"), ("CAP_BPF", "CAP_PERFMON")) == []


def test_effective_caps_reads_status(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000001ffffffffff\n")
    assert system.effective_caps(str(status)) == 0x1FFFFFFFFFF


def test_mounts_parse_and_unescape(tmp_path: Path) -> None:
    m = tmp_path / "mounts"
    m.write_text(
        "tracefs /sys/kernel/tracing tracefs rw 0 0\ncgroup2 /sys/fs/cg\\040two cgroup2 rw 0 0\n"
    )
    got = system.mounts(str(m))
    assert got[0].fstype == "tracefs"
    assert got[1].target == "/sys/fs/cg two"


def test_release_tuple() -> None:
    assert system.KernelInfo("6.18.44-fc-v769", "", "x86_64").release_tuple == (6, 18, 44)
    assert system.KernelInfo("5.10.0-28-amd64", "", "x86_64").release_tuple == (5, 10, 0)


def test_syscall_function_prefix_per_arch() -> None:
    assert system.syscall_function_prefix("x86_64") == "__x64_sys_"
    assert system.syscall_function_prefix("aarch64") == "__arm64_sys_"


def test_btf_path_explains_missing_file(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(system.BtfMissing, match="does not exist"):
        system.btf_path(tmp_path / "nope.btf")
