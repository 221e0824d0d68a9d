"""Facts about the running system that BPF tools depend on.

Kernel release and architecture, capabilities, memlock, the filesystems
libbpf needs (tracefs for tracepoint ids, cgroup2 for cgroup hooks) and the
kernel's BTF. Reads /proc and /sys only; mounting tracefs is the one action.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .errors import EXIT_PRIVILEGES, EXIT_UNSUPPORTED, BpfscopeError, UserError

__all__ = [
    "CAPABILITIES",
    "CORE_CAPS",
    "REQUIRED_CAPS",
    "VMLINUX_BTF",
    "BtfMissing",
    "KernelInfo",
    "Mount",
    "arch",
    "btf_path",
    "cgroup2_mount",
    "effective_caps",
    "ensure_tracefs",
    "kernel_info",
    "memlock_limit",
    "missing_caps",
    "mounts",
    "require_privileges",
    "syscall_function_prefix",
    "tracefs_path",
]

VMLINUX_BTF: Final = Path("/sys/kernel/btf/vmlinux")

# Capability numbers from <linux/capability.h>.
CAPABILITIES: Final[dict[str, int]] = {
    "CAP_NET_ADMIN": 12,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_RESOURCE": 24,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}

# Without these no bpfscope tool can load (CAP_SYS_ADMIN stands in for both).
CORE_CAPS: Final = ("CAP_BPF", "CAP_PERFMON")

# What each capability is for; CAP_SYS_ADMIN stands in for all of them.
REQUIRED_CAPS: Final[dict[str, str]] = {
    "CAP_BPF": "load BPF programs and create maps",
    "CAP_PERFMON": "attach tracing programs (tracepoints, kprobes, uprobes) and read kernel memory",
    "CAP_NET_ADMIN": "attach cgroup and network program types (no current tool needs it)",
    "CAP_SYS_RESOURCE": "raise RLIMIT_MEMLOCK (needed only on kernels before 5.11)",
}


@dataclass(frozen=True)
class KernelInfo:
    release: str
    version: str
    machine: str

    @property
    def release_tuple(self) -> tuple[int, ...]:
        parts = []
        for piece in self.release.split("-")[0].split("."):
            digits = "".join(ch for ch in piece if ch.isdigit())
            if not digits:
                break
            parts.append(int(digits))
        return tuple(parts)


def kernel_info() -> KernelInfo:
    uname = os.uname()
    return KernelInfo(uname.release, uname.version, uname.machine)


def tracing_may_allocate(kernel: KernelInfo | None = None) -> bool:
    """Whether tracing programs may use run-time allocated hash maps without
    a kernel warning: Linux 6.1 added the BPF memory allocator for them."""
    return (kernel or kernel_info()).release_tuple[:2] >= (6, 1)


def arch() -> str:
    """Machine name as the packaged objects are named (x86_64, aarch64)."""
    return platform.machine()


def syscall_function_prefix(machine: str | None = None) -> str:
    """Prefix of syscall entry functions (``__x64_sys_getpid`` on x86_64)."""
    machine = machine or arch()
    return {
        "x86_64": "__x64_sys_",
        "aarch64": "__arm64_sys_",
        "s390x": "__s390x_sys_",
        "riscv64": "__riscv_sys_",
    }.get(machine, "sys_")


def effective_caps(status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def missing_caps(caps: int | None = None, names: tuple[str, ...] | None = None) -> list[str]:
    """Which of ``names`` (default: the four bpfscope uses) are not effective.

    CAP_SYS_ADMIN covers CAP_BPF and CAP_PERFMON (kernels before 5.8 only
    know CAP_SYS_ADMIN for BPF).
    """
    caps = effective_caps() if caps is None else caps
    names = names or tuple(REQUIRED_CAPS)
    has_admin = bool(caps & (1 << CAPABILITIES["CAP_SYS_ADMIN"]))
    out = []
    for name in names:
        if caps & (1 << CAPABILITIES[name]):
            continue
        if has_admin and name in ("CAP_BPF", "CAP_PERFMON"):
            continue
        out.append(name)
    return out


def memlock_limit() -> tuple[int, int]:
    """(soft, hard) RLIMIT_MEMLOCK in bytes; -1 means unlimited."""
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return (
        -1 if soft == resource.RLIM_INFINITY else soft,
        -1 if hard == resource.RLIM_INFINITY else hard,
    )


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: str


def mounts(path: str = "/proc/self/mounts") -> list[Mount]:
    out = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                # /proc/mounts escapes spaces as \040
                target = parts[1].replace("\\040", " ")
                out.append(Mount(parts[0], target, parts[2], parts[3]))
    return out


def _mount_of(fstype: str) -> str | None:
    for m in mounts():
        if m.fstype == fstype:
            return m.target
    return None


def tracefs_path() -> str | None:
    """Where tracefs is mounted (directly, or under debugfs), if anywhere."""
    direct = _mount_of("tracefs")
    if direct:
        return direct
    debugfs = _mount_of("debugfs")
    if debugfs and Path(debugfs, "tracing", "events").is_dir():
        return str(Path(debugfs, "tracing"))
    return None


def cgroup2_mount() -> str | None:
    return _mount_of("cgroup2")


def bpffs_mount() -> str | None:
    return _mount_of("bpf")


def debugfs_mount() -> str | None:
    return _mount_of("debugfs")


def ensure_tracefs() -> tuple[str | None, str]:
    """Make sure tracefs is mounted; mount it at /sys/kernel/tracing if not.

    libbpf resolves tracepoint ids through tracefs, so tracepoint attachment
    fails without it. Returns (path or None, what happened).
    """
    existing = tracefs_path()
    if existing:
        return existing, "mounted"
    target = "/sys/kernel/tracing"
    if not Path(target).is_dir():
        return None, f"{target} does not exist (kernel without CONFIG_TRACING?)"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mount.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_ulong,
        ctypes.c_void_p,
    ]
    libc.mount.restype = ctypes.c_int
    if libc.mount(b"tracefs", target.encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        return None, (
            f"not mounted, and mounting it failed: {os.strerror(err)} "
            f"({errno.errorcode.get(err, err)}); run `mount -t tracefs tracefs {target}`"
        )
    return target, f"was not mounted; mounted at {target}"


class BtfMissing(BpfscopeError, RuntimeError):
    """No kernel BTF: CO-RE relocations cannot be resolved."""

    exit_code = EXIT_UNSUPPORTED


def btf_path(custom: str | os.PathLike[str] | None = None) -> Path:
    """The BTF file to relocate against: ``custom`` or the kernel's own."""
    if custom is not None:
        path = Path(custom)
        if not path.is_file():
            raise BtfMissing(f"BTF file {path} does not exist")
        return path
    if not VMLINUX_BTF.is_file():
        raise BtfMissing(
            f"{VMLINUX_BTF} is missing: this kernel was built without "
            "CONFIG_DEBUG_INFO_BTF=y. Use a kernel with BTF, or pass a BTF file "
            "for it with --btf FILE (for example from btfhub)."
        )
    return VMLINUX_BTF


def require_privileges(extra: tuple[str, ...] = ()) -> None:
    """Fail early, naming the capabilities that are missing."""
    names = (*CORE_CAPS, *extra)
    missing = missing_caps(names=names)
    if missing:
        needs = "; ".join(f"{c}: {REQUIRED_CAPS.get(c, '')}" for c in missing)
        raise UserError(
            f"bpfscope needs root or these capabilities, which are missing: {needs}. "
            "Run with sudo, or grant them (e.g. setcap / container capabilities).",
            EXIT_PRIVILEGES,
        )
