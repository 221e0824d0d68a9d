"""Least privilege, proven on this kernel.

`bpfscope serve` runs under `setpriv` with exactly the capabilities the
container manifests grant (every other capability gone from the bounding
set, no_new_privs on, RLIMIT_MEMLOCK at 64 KiB like a container's default)
and must start, attach every hook, and serve the exact bytes of a loopback
TCP exchange, with the process that made it. It does so as uid 0 (what the
container runs as) on the default rungs and on the tracepoint rung (which
reads the host's tracefs), and as an unprivileged uid with ambient
capabilities (how a plain host runs it under systemd).

Then each capability is dropped in turn: `bpfscope doctor --json` must name
exactly that one as missing and `serve` must fail with one clear line (exit
3, no traceback). Finally the capability lists in deploy/docker-compose.yml
and deploy/kubernetes/daemonset.yaml must equal the set proven here.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent_helpers import tcp_exchange
from bpfscope import system
from bpfscope.features import Mechanism
from bpfscope.flows import programs as flows_programs

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]

# What the manifests grant: proven sufficient (and each one necessary) below.
PROVEN: tuple[str, ...] = ("CAP_BPF", "CAP_PERFMON")

NOBODY = 65534
MEMLOCK = 64 * 1024  # bytes; Docker's and containerd's usual default


def _bit(cap: str) -> int:
    return 1 << CAP_NUMBERS[cap]


# From <linux/capability.h>; the extra ones are only used to check CapEff.
CAP_NUMBERS = {**system.CAPABILITIES, "CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19}


def _setpriv(caps: tuple[str, ...], uid: int) -> list[str]:
    """A setpriv prefix leaving exactly ``caps`` (as uid ``uid``)."""
    names = "".join(f",+{c.removeprefix('CAP_').lower()}" for c in caps)
    args = [
        "setpriv",
        f"--bounding-set=-all{names}",
        f"--inh-caps=-all{names}",
        "--no-new-privs",
    ]
    if uid != 0:
        args += [
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            f"--ambient-caps=-all{names}",
        ]
    return [*args, "--"]


def _limit_memlock() -> None:
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (MEMLOCK, MEMLOCK))


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory both uids can write without CAP_DAC_OVERRIDE, like /tmp
    (pytest's own tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="bpfscope-lp-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _bpfscope(*args: str) -> list[str]:
    return [sys.executable, "-m", "bpfscope.cli", *args]


def _get(url: str) -> tuple[int, Any]:
    import httpx

    r = httpx.get(url, timeout=2)
    return r.status_code, r.json() if "json" in r.headers.get("content-type", "") else r.text


@contextmanager
def _serve(
    caps: tuple[str, ...], uid: int, workdir: Path, *extra: str
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = _free_port()
    cmd = _setpriv(caps, uid) + _bpfscope(
        "serve", "--listen", f"127.0.0.1:{port}", "--interval", "0.2s",
        "--db", str(workdir / "history.db"), "--no-dns", *extra,
    )  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_limit_memlock,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                status, _ = _get(url + "/api/v1/health")
                if status in (200, 503):
                    break
            except Exception:  # not listening yet
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                _out, err = proc.communicate(timeout=10)
                raise AssertionError(f"agent did not come up under {caps} uid {uid}: {err}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _exchange(request: int, response: int) -> int:
    """One loopback TCP connection; returns the client's local port."""
    return tcp_exchange(request, response)[1]


def _cap_eff(pid: int) -> int:
    return system.effective_caps(f"/proc/{pid}/status")


def _require_tracepoint_rung() -> None:
    """Skip unless the flows tool can stand on its tracepoint rung here:
    the mechanism works and its targets exist (sock_send_length is 6.3+)."""
    from bpfscope.ladder import target_missing
    from kernel_require import require

    require("tracepoint")
    for hook in flows_programs.hooks():
        for rung in hook.rungs:
            if rung.mechanism is Mechanism.TRACEPOINT and (why := target_missing(rung)):
                pytest.skip(f"the flows tracepoint rung cannot attach here: {why}")


@pytest.mark.parametrize(
    ("uid", "extra"),
    [
        pytest.param(0, (), id="container-uid0"),
        pytest.param(0, ("--attach", "tracepoint"), id="container-uid0-tracepoint"),
        pytest.param(NOBODY, (), id="host-nobody-ambient"),
    ],
)
def test_serve_attaches_and_serves_real_flows_with_only_the_granted_caps(
    workdir: Path, uid: int, extra: tuple[str, ...]
) -> None:
    if extra:
        _require_tracepoint_rung()
    with _serve(PROVEN, uid, workdir, *extra) as (url, proc):
        # The kernel says the agent holds exactly these capabilities, as this uid.
        assert _cap_eff(proc.pid) == sum(_bit(c) for c in PROVEN)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert f"Uid:\t{uid}\t" in status
        assert "NoNewPrivs:\t1" in status

        code, health = _get(url + "/api/v1/health")
        assert code == 200, health
        flows = health["collectors"]["flows"]
        assert flows["alive"]
        rungs = flows["rungs"]
        required = [h for h in flows_programs.hooks() if h.required]
        assert required
        for hook in required:
            assert rungs.get(hook.name), f"hook {hook.name} not attached: {rungs}"
            if extra and any(r.mechanism is Mechanism.TRACEPOINT for r in hook.rungs):
                assert rungs[hook.name] == "tracepoint", rungs

        cport = _exchange(23_456, 65_432)
        deadline = time.monotonic() + 10
        mine: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            _, body = _get(url + f"/api/v1/flows?port={cport}&limit=100")
            mine = [
                f
                for f in body["items"]
                if f["lport"] == cport and f["proto"] == "tcp" and f["rx_bytes"] == 65_432
            ]
            if mine:
                break
            time.sleep(0.2)
        assert mine, f"the loopback flow (client port {cport}) never showed up: {body}"
        flow = mine[0]
        assert flow["tx_bytes"] == 23_456
        # Attribution works without CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH.
        assert flow["pid"] == os.getpid()
        assert flow["cmdline"]
        assert Path(sys.executable).name in flow["cmdline"]

        code, progs = _get(url + "/api/v1/programs")
        assert code == 200
        assert progs["items"]
        assert all(p["id"] > 0 for p in progs["items"])
        code, metrics = _get(url + "/metrics")
        assert code == 200
        assert "bpfscope_tcp_received_bytes" in metrics

        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
        assert "Traceback" not in err


def test_doctor_is_satisfied_by_the_granted_caps(workdir: Path) -> None:
    out = subprocess.run(
        _setpriv(PROVEN, 0) + _bpfscope("doctor", "--json"),
        cwd=workdir,
        capture_output=True,
        text=True,
        preexec_fn=_limit_memlock,
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert out.returncode == 0, out.stderr
    assert report["privileges"]["ok"]
    # CAP_SYS_RESOURCE is only needed where BPF memory counts against
    # RLIMIT_MEMLOCK (kernels before 5.11); doctor proves it does not here,
    # with memlock limited to 64 KiB. CAP_NET_ADMIN is for cgroup/network
    # program types no tool uses: named as missing, but not blocking.
    assert set(report["privileges"]["missing"]) <= {"CAP_SYS_RESOURCE", "CAP_NET_ADMIN"}
    assert report["privileges"]["blocking"] == []
    assert report["memlock"]["soft"] == MEMLOCK
    assert report["memlock"]["memcg_accounting"] is True
    flows = next(t for t in report["tools"] if t["name"] == "flows")
    assert flows["runnable"]


def test_uid0_with_granted_caps_cannot_mount_tracefs_itself(workdir: Path) -> None:
    """Why the container mounts the host's tracefs instead of mounting its own."""
    script = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL('libc.so.6', use_errno=True)\n"
        "rc = libc.mount(b'tracefs', sys.argv[1].encode(), b'tracefs', 0, None)\n"
        "print(ctypes.get_errno() if rc else 0)\n"
        "if rc == 0: libc.umount2(sys.argv[1].encode(), 0)\n"
    )
    target = workdir / "tracing"
    target.mkdir()
    out = subprocess.run(
        [*_setpriv(PROVEN, 0), sys.executable, "-c", script, str(target)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.stdout.strip() == "1", out.stdout + out.stderr  # EPERM: needs CAP_SYS_ADMIN


# -- necessary ------------------------------------------------------------------


@pytest.mark.parametrize("dropped", PROVEN)
def test_doctor_names_exactly_the_dropped_cap(workdir: Path, dropped: str) -> None:
    caps = tuple(c for c in PROVEN if c != dropped)
    out = subprocess.run(
        _setpriv(caps, 0) + _bpfscope("doctor", "--json"),
        cwd=workdir,
        capture_output=True,
        text=True,
        preexec_fn=_limit_memlock,
        timeout=120,
    )
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr
    report = json.loads(out.stdout)
    assert report["privileges"]["blocking"] == [dropped]
    assert dropped in report["privileges"]["missing"]
    assert not report["privileges"]["ok"]
    assert report["privileges"]["why"][dropped]
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("dropped", PROVEN)
def test_serve_refuses_clearly_without_each_cap(workdir: Path, dropped: str) -> None:
    caps = tuple(c for c in PROVEN if c != dropped)
    out = subprocess.run(
        _setpriv(caps, 0)
        + _bpfscope(
            "serve", "--listen", f"127.0.0.1:{_free_port()}", "--db", str(workdir / "h.db")
        ),
        cwd=workdir,
        capture_output=True,
        text=True,
        preexec_fn=_limit_memlock,
        timeout=60,
    )
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("bpfscope: error:")
    assert dropped in lines[0]
    assert all(c not in lines[0] for c in caps)
    assert "Traceback" not in out.stderr


_COLLECT = """
import sys
from bpfscope import libbpf
from bpfscope.flows.collector import FlowCollector
from bpfscope.ladder import LadderError
try:
    c = FlowCollector(max_entries=1024)
    c.start()
except (libbpf.BpfError, LadderError) as exc:
    print("refused:", str(exc).splitlines()[0][:200])
    sys.exit(3)
print("attached:", ",".join(sorted(set(filter(None, c.rungs().values())))))
c.close()
"""


@pytest.mark.parametrize(
    ("dropped", "kernel_refuses"),
    [("CAP_BPF", True), ("CAP_PERFMON", True)],
)
def test_which_caps_the_kernel_itself_requires(
    workdir: Path, dropped: str, kernel_refuses: bool
) -> None:
    """Below serve's own check: does the kernel refuse the flow collector?

    CAP_BPF (create maps, load) and CAP_PERFMON (tracing programs) are
    kernel requirements; that the collector runs without CAP_NET_ADMIN is
    what the serve test above proves with PROVEN alone.
    """
    caps = tuple(c for c in PROVEN if c != dropped)
    out = subprocess.run(
        [*_setpriv(caps, 0), sys.executable, "-c", _COLLECT],
        cwd=workdir,
        capture_output=True,
        text=True,
        preexec_fn=_limit_memlock,
        timeout=60,
    )
    if kernel_refuses:
        assert out.returncode == 3, out.stdout + out.stderr
        assert out.stdout.startswith("refused:")
    else:
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.startswith("attached:")


def test_unprivileged_uid_needs_dac_read_search_for_the_tracepoint_rung(workdir: Path) -> None:
    """tracefs is 0700 root: uid 0 reads tracepoint ids, `nobody` cannot.

    This is why the image runs as uid 0 (with every other capability gone)
    rather than adding CAP_DAC_READ_SEARCH: a non-root host install on a
    kernel without tp_btf/raw_tp would need it.
    """
    _require_tracepoint_rung()
    mode = os.stat(system.tracefs_path() or "/sys/kernel/tracing").st_mode & 0o777
    if mode & 0o005:
        pytest.skip(f"tracefs is world-readable here (mode {mode:o})")
    port = _free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--db", str(workdir / "h.db")]
    out = subprocess.run(
        _setpriv(PROVEN, NOBODY) + _bpfscope("serve", *args, "--attach", "tracepoint"),
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "bpfscope: error:" in out.stderr
    assert "Traceback" not in out.stderr
    with _serve((*PROVEN, "CAP_DAC_READ_SEARCH"), NOBODY, workdir, "--attach", "tracepoint") as (
        url,
        _proc,
    ):
        _, health = _get(url + "/api/v1/health")
        assert "tracepoint" in health["collectors"]["flows"]["rungs"].values()


# -- the manifests grant what was proven -----------------------------------------


def _manifest_caps() -> dict[str, set[str]]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests")
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    svc = compose["services"]["bpfscope"]
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "daemonset.yaml").read_text()))
    [ds] = [d for d in docs if d and d.get("kind") == "DaemonSet"]
    [ctr] = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "bpfscope"]
    k8s = ctr["securityContext"]["capabilities"]
    assert svc["cap_drop"] == ["ALL"]
    assert k8s["drop"] == ["ALL"]
    return {
        "compose": {f"CAP_{c}" for c in svc["cap_add"]},
        "daemonset": {f"CAP_{c}" for c in k8s["add"]},
    }


def test_manifests_grant_exactly_the_proven_caps() -> None:
    caps = _manifest_caps()
    assert caps["compose"] == set(PROVEN)
    assert caps["daemonset"] == set(PROVEN)
