"""matrix/run's own parts, without booting anything (fast, no root, runs by default)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN = Path(__file__).resolve().parents[2] / "matrix" / "run"


def _load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("bpfscope_matrix_run", str(RUN))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = mod  # dataclasses look their module up
    loader.exec_module(mod)
    return mod


mx = _load()


def _cpio_members(blob: bytes) -> dict[str, tuple[int, tuple[int, int], bytes]]:
    """Parse a newc archive: name -> (mode, (rdevmajor, rdevminor), data)."""
    out = {}
    off = 0
    while True:
        assert blob[off : off + 6] == b"070701", off
        f = [int(blob[off + 6 + 8 * i : off + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name_start = off + 110
        name = blob[name_start : name_start + namesize - 1].decode()
        data_start = name_start + namesize
        data_start += -data_start % 4
        data = blob[data_start : data_start + filesize]
        off = data_start + filesize
        off += -off % 4
        if name == "TRAILER!!!":
            assert off == len(blob)
            return out
        out[name] = (f[1], (f[9], f[10]), data)


def _fake_moddir(tmp_path: Path) -> Path:
    moddir = tmp_path / "lib/modules/9.9.9"
    deps = {
        "kernel/drivers/virtio/virtio.ko": [],
        "kernel/drivers/virtio/virtio_ring.ko": [],
        "kernel/drivers/virtio/virtio_pci.ko": [
            "kernel/drivers/virtio/virtio_ring.ko",
            "kernel/drivers/virtio/virtio.ko",
        ],
        "kernel/net/9p/9pnet.ko": [],
        "kernel/net/9p/9pnet_virtio.ko": [
            "kernel/net/9p/9pnet.ko",
            "kernel/drivers/virtio/virtio.ko",
        ],
        "kernel/fs/netfs/netfs.ko": [],
        "kernel/fs/9p/9p.ko": ["kernel/net/9p/9pnet.ko", "kernel/fs/netfs/netfs.ko"],
    }
    for mod in deps:
        (moddir / mod).parent.mkdir(parents=True, exist_ok=True)
        (moddir / mod).write_bytes(b"\x7fELF fake " + mod.encode())
    (moddir / "modules.dep").write_text("".join(f"{m}: {' '.join(d)}\n" for m, d in deps.items()))
    (moddir / "modules.builtin").write_text("kernel/fs/overlayfs/overlay.ko\n")
    return moddir


def test_module_order_puts_dependencies_first_and_accepts_builtins(tmp_path: Path) -> None:
    order = [Path(m).name for m in mx.module_order(_fake_moddir(tmp_path), mx.BOOT_MODULES)]
    virtio = ["virtio.ko", "virtio_ring.ko", "virtio_pci.ko"]
    ninep = ["9pnet.ko", "9pnet_virtio.ko", "netfs.ko", "9p.ko"]
    assert sorted(order) == sorted([*virtio, *ninep])
    for mod, dep in [
        ("virtio_pci.ko", "virtio.ko"),
        ("virtio_pci.ko", "virtio_ring.ko"),
        ("9pnet_virtio.ko", "9pnet.ko"),
        ("9p.ko", "netfs.ko"),
    ]:
        assert order.index(dep) < order.index(mod)


def test_module_order_names_a_missing_module(tmp_path: Path) -> None:
    moddir = _fake_moddir(tmp_path)
    (moddir / "modules.builtin").write_text("")
    with pytest.raises(mx.MatrixError, match="no module overlay"):
        mx.module_order(moddir, mx.BOOT_MODULES)


@pytest.mark.skipif(
    not any(p and mx._static(p) for p in ("/bin/busybox", shutil.which("busybox"))),
    reason="needs a static busybox (busybox-static)",
)
def test_initramfs_is_a_valid_newc_archive(tmp_path: Path) -> None:
    moddir = _fake_moddir(tmp_path)
    out = tmp_path / "initramfs.cpio"
    mx.build_initramfs(moddir, out)
    members = _cpio_members(out.read_bytes())
    mode, _, init = members["init"]
    assert mode == 0o100755
    assert init == (RUN.parent / "init").read_bytes()
    assert members["dev/console"][:2] == (0o020600, (5, 1))
    assert members["bin/busybox"][2].startswith(b"\x7fELF")
    order = members["modules/order"][2].decode().split()
    assert order[-1] == "9p.ko"
    for name in order:
        assert members[f"modules/{name}"][2].startswith(b"\x7fELF fake")


def test_junit_and_doctor_summaries(tmp_path: Path) -> None:
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.kernel.t" name="a" time="1.5"/>'
        '<testcase classname="tests.kernel.t" name="b"><failure message="boom"/></testcase>'
        '<testcase classname="tests.kernel.t" name="c"><skipped message="no kprobes"/></testcase>'
        "</testsuite></testsuites>"
    )
    junit = mx.parse_junit(xml)
    assert junit["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert junit["cases"][1] == {
        "test": "tests.kernel.t::b",
        "outcome": "failed",
        "message": "boom",
        "seconds": 0.0,
    }
    assert mx.parse_junit(tmp_path / "missing.xml") is None

    doctor = {
        "ok": True,
        "summary": "s",
        "mechanisms": {"fentry": {"status": "available"}, "kprobe": {"status": "unsupported"}},
        "tools": [{"name": "selftest", "runnable": True, "error": None,
                   "hooks": [{"hook": "getpid", "mechanism": "fentry"}]}],
    }  # fmt: skip
    s = mx.summarize_doctor(doctor)
    assert s["mechanisms"] == {"fentry": "available", "kprobe": "unsupported"}
    assert s["tools"]["selftest"]["rungs"] == {"getpid": "fentry"}


def test_kernels_conf_default_is_debian_6_1_with_trampolines() -> None:
    kernels = mx.read_kernels()
    assert kernels[0].name == "debian12-6.1"
    assert {"fentry", "kprobe"} <= set(kernels[0].expect)
    assert len({k.name for k in kernels}) == len(kernels)


def test_unknown_kernel_is_one_line_exit_2() -> None:
    r = subprocess.run(
        [str(RUN), "-k", "no-such-kernel"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "matrix: unknown kernel no-such-kernel; known: debian12-6.1, debian11-5.10, "
        "debian13-6.12, debian12-6.1-arm64, debian13-6.12-arm64"
    ]


def test_arm64_kernels_boot_under_qemu_aarch64_with_their_own_root(tmp_path: Path) -> None:
    kernels = {k.name: k for k in mx.read_kernels()}
    arm = kernels["debian12-6.1-arm64"]
    assert arm.arch == "aarch64"
    assert kernels["debian13-6.12"].arch == "x86_64"
    # Debian 12's arm64 6.1 cannot attach trampolines: it must not expect them.
    assert "fentry" not in arm.expect
    assert "kprobe" in arm.expect
    a = mx.argparse.Namespace(cpus=2, memory=2048)
    info = {"vmlinuz": "/k/vmlinuz"}
    rootfs = tmp_path / "rootfs"
    cmd = mx.qemu_cmd(tmp_path, info, tmp_path, "tcg", a, "aarch64", rootfs)
    assert cmd[0] == "qemu-system-aarch64"
    assert cmd[cmd.index("-machine") + 1] == "virt"
    append = cmd[cmd.index("-append") + 1]
    assert "console=ttyAMA0" in append
    assert f"matrix.repo={mx.REPO}" in append
    fsdevs = [cmd[i + 1] for i, x in enumerate(cmd) if x == "-fsdev"]
    assert any(f.startswith(f"local,id=root,path={rootfs},") for f in fsdevs)
    assert any(f.startswith(f"local,id=repo,path={mx.REPO},") for f in fsdevs)
    # x86_64 guests keep the host's root and no repo share.
    x86 = mx.qemu_cmd(tmp_path, info, tmp_path, "tcg", a)
    assert x86[0] == "qemu-system-x86_64"
    assert "matrix.repo=" not in x86[x86.index("-append") + 1]
    assert any(x.startswith("local,id=root,path=/,") for x in x86)


def test_guest_requirements_leave_out_the_development_tools() -> None:
    reqs = mx._guest_requirements()
    names = {r.split(">")[0].split("=")[0].lower() for r in reqs}
    assert {"click", "pytest", "fastapi", "hypothesis"} <= names
    assert not names & {"ruff", "mypy", "build", "hatchling", "bpfscope[agent,lab,otlp]"}


def test_a_guest_that_dies_before_its_job_is_booted_again_and_says_why(tmp_path: Path) -> None:
    # only a boot that never reached the job counts as a boot failure
    assert mx.boot_failed("done", None)
    assert mx.boot_failed("boot-timeout", None)
    assert mx.boot_failed("exit:1", None)
    assert not mx.boot_failed("done", 5.5)
    assert not mx.boot_failed("timeout", 5.5)
    assert not mx.boot_failed("not run", None)
    console = tmp_path / "console.log"
    console.write_text(
        "[    2.340450] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n"
        "[    2.342357] RIP: 0010:sched_clock_cpu+0x9/0x1d0\n"
        "[    2.352023] Kernel panic - not syncing: Fatal exception in interrupt\n"
    )
    assert mx.boot_failure_summary("done", console) == (
        "qemu exited before the job: Oops: int3: 0000 [#1] PREEMPT SMP NOPTI"
        " at 0010:sched_clock_cpu+0x9/0x1d0"
    )
    console.write_text("")
    assert mx.boot_failure_summary("boot-timeout", console) == "no boot in time"
