"""Does a hook's target exist on this kernel?

A mechanism can work while a particular target is missing (the
``sock:sock_send_length`` tracepoint appeared in 6.3; a kernel function may
be inlined or renamed). The attach ladder asks these questions before it
commits to a rung.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from . import libbpf as bpf
from . import system

__all__ = [
    "btf_func_exists",
    "btf_tracepoint_exists",
    "kallsyms_has",
    "kernel_btf",
    "syscall_entry_function",
    "tracepoint_exists",
]


@functools.cache
def kernel_btf() -> bpf.Btf | None:
    """The running kernel's BTF, loaded once (None without BTF)."""
    if not system.VMLINUX_BTF.is_file():
        return None
    try:
        return bpf.Btf.vmlinux()
    except bpf.BpfError:
        return None


def btf_func_exists(name: str) -> bool:
    btf = kernel_btf()
    return btf is not None and btf.find(name, 12) is not None  # BTF_KIND_FUNC


def btf_tracepoint_exists(name: str) -> bool:
    """tp_btf/raw_tp targets have a ``btf_trace_<name>`` typedef in BTF."""
    btf = kernel_btf()
    return btf is not None and btf.find(f"btf_trace_{name}", bpf.BTF_KIND_TYPEDEF) is not None


def tracepoint_exists(category: str, name: str) -> bool:
    tracefs = system.tracefs_path()
    if tracefs is None:
        return False
    return Path(tracefs, "events", category, name).is_dir()


@functools.cache
def _kallsyms() -> frozenset[str]:
    names = set()
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    names.add(parts[2])
    except OSError:
        pass
    return frozenset(names)


def kallsyms_has(name: str) -> bool:
    return name in _kallsyms()


def syscall_entry_function(syscall: str) -> str | None:
    """The kernel function fentry/kprobe should use for a syscall, if any.

    The arch wrapper (``__x64_sys_getpid``) is the stable entry, but some
    kernels' BTF omits it; ``__do_sys_<name>`` is the body on those.
    """
    candidates = [system.syscall_function_prefix() + syscall, f"__do_sys_{syscall}"]
    for name in candidates:
        if btf_func_exists(name):
            return name
    return None


def kprobe_target_exists(name: str) -> bool:
    """kprobes need the symbol in kallsyms (not inlined, not blacklisted)."""
    if os.path.exists("/sys/kernel/debug/kprobes/blacklist"):
        try:
            with open("/sys/kernel/debug/kprobes/blacklist") as f:
                if any(line.split()[-1] == name for line in f if line.strip()):
                    return False
        except OSError:
            pass
    return kallsyms_has(name)
