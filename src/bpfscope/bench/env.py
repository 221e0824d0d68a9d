"""The machine a benchmark ran on: everything that moves its numbers."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .. import __version__, libbpf

__all__ = ["capture", "summary_line"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model"):
            return value.strip()
    return platform.processor() or None


def _hypervisor() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    flagged = any(line.startswith("flags") and " hypervisor" in line for line in text.splitlines())
    vendor = _read("/sys/class/dmi/id/sys_vendor")
    product = _read("/sys/class/dmi/id/product_name")
    if not flagged:
        return None
    return " ".join(x for x in (vendor, product) if x) or "yes"


def _mitigations() -> dict[str, str]:
    d = Path("/sys/devices/system/cpu/vulnerabilities")
    out: dict[str, str] = {}
    if d.is_dir():
        for p in sorted(d.iterdir()):
            value = _read(str(p))
            if value is not None:
                out[p.name] = value
    return out


def _cmdline_mitigations() -> str | None:
    for arg in (_read("/proc/cmdline") or "").split():
        if arg.startswith("mitigations="):
            return arg.partition("=")[2]
    return None


def _cc_version(compiler: list[str] | None) -> str | None:
    if not compiler:
        return None
    try:
        out = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.splitlines()[0].strip() if out else None


def capture(
    *, bpftrace_version: str | None = None, compiler: list[str] | None = None
) -> dict[str, Any]:
    uname = os.uname()
    try:
        affinity = len(os.sched_getaffinity(0))
    except OSError:
        affinity = None
    try:
        lib = libbpf.libbpf_version()
    except libbpf.LibbpfUnavailable:
        lib = None
    mitigations = _mitigations()
    vulnerable = sorted(k for k, v in mitigations.items() if v.startswith("Vulnerable"))
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "hostname": uname.nodename,
        "kernel": uname.release,
        "kernel_version": uname.version,
        "arch": uname.machine,
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": affinity,
        "hypervisor": _hypervisor(),
        "mitigations": mitigations,
        "mitigations_vulnerable": vulnerable,
        "mitigations_cmdline": _cmdline_mitigations(),
        "clocksource": _read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
        "cpufreq_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "bpf_jit_enable": _read("/proc/sys/net/core/bpf_jit_enable"),
        "bpf_jit_harden": _read("/proc/sys/net/core/bpf_jit_harden"),
        "bpf_stats_enabled": _read("/proc/sys/kernel/bpf_stats_enabled"),
        "loadavg_start": _read("/proc/loadavg"),
        "libc": " ".join(platform.libc_ver()) or None,
        "libbpf": lib,
        "bpftrace": bpftrace_version,
        "cc": _cc_version(compiler),
        "python": platform.python_version(),
        "bpfscope": __version__,
    }


def summary_line(env: dict[str, Any]) -> str:
    jit = {"0": "off", "1": "on", "2": "on (debug)"}.get(env.get("bpf_jit_enable") or "", "?")
    parts = [
        f"kernel {env.get('kernel')}",
        f"{env.get('cpu_model')}",
        f"{env.get('cores')} cores",
        f"clocksource {env.get('clocksource')}",
        f"JIT {jit}",
    ]
    if env.get("hypervisor"):
        parts.append(f"VM ({env['hypervisor']})")
    if env.get("mitigations_cmdline"):
        parts.append(f"mitigations={env['mitigations_cmdline']}")
    if env.get("bpftrace"):
        parts.append(f"bpftrace {env['bpftrace']}")
    return ", ".join(parts)
