"""Overhead lab on the real kernel: exact syscall counts, K attachments,
skipped mechanisms with reasons, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bpfscope import libbpf
from bpfscope.bench import driver, programs
from bpfscope.bench.programs import BenchObject
from bpfscope.features import Mechanism, Status, probe
from bpfscope.sysnames import syscall_nr
from kernel_require import require

pytestmark = pytest.mark.kernel

N = 12_345


@pytest.fixture(scope="module")
def exe() -> Path:
    return driver.build()


def _obj(syscall: str, m: Mechanism, target: str, copies: int = 1) -> BenchObject:
    return BenchObject(
        syscall_nr(syscall), {(m, "hash"): copies, (m, "count"): copies}, {m: target}
    )


@pytest.mark.parametrize("syscall", ["getpid", "getuid", "getppid", "times", "gettimeofday"])
def test_driver_makes_exactly_n_syscalls(exe: Path, syscall: str) -> None:
    require("raw_tp")
    with _obj(syscall, Mechanism.RAW_TP, "sys_enter") as obj:
        obj.reset()
        links = obj.attach(Mechanism.RAW_TP, "hash", 1)
        try:
            out = driver.run(exe, syscall, syscall_nr(syscall), N)
        finally:
            programs.detach(links)
        assert obj.pid_count(out.pid) == N


def test_libc_gettimeofday_is_not_a_real_syscall(exe: Path) -> None:
    require("raw_tp")
    if "[vdso]" not in Path("/proc/self/maps").read_text():
        pytest.skip("no vDSO mapped on this system")
    with _obj("gettimeofday", Mechanism.RAW_TP, "sys_enter") as obj:
        obj.reset()
        with_links = obj.attach(Mechanism.RAW_TP, "hash", 1)
        try:
            out = driver.run(exe, "gettimeofday", syscall_nr("gettimeofday"), N, path="libc")
        finally:
            programs.detach(with_links)
        assert obj.pid_count(out.pid) == 0


@pytest.mark.parametrize(
    ("mechanism", "target"),
    [
        (Mechanism.TRACEPOINT, "syscalls:sys_enter_getppid"),
        (Mechanism.RAW_TP, "sys_enter"),
        (Mechanism.TP_BTF, "sys_enter"),
    ],
)
def test_k_copies_are_k_attachments(exe: Path, mechanism: Mechanism, target: str) -> None:
    require(str(mechanism))
    k = 4
    with _obj("getppid", mechanism, target, copies=k) as obj:
        obj.reset()
        before = set(libbpf.link_ids())
        links = obj.attach(mechanism, "hash", k)
        try:
            assert len(set(libbpf.link_ids()) - before) == k
            out = driver.run(exe, "getppid", syscall_nr("getppid"), N)
        finally:
            programs.detach(links)
        assert obj.pid_count(out.pid) == k * N  # every copy saw every call
        obj.reset()
        links = obj.attach(mechanism, "count", k)
        try:
            driver.run(exe, "getppid", syscall_nr("getppid"), N)
        finally:
            programs.detach(links)
        counts = obj.copy_counts()
        assert all(c >= N for c in counts[:k])
        assert counts[k:] == [0] * (programs.MAX_COPIES - k)


@pytest.mark.parametrize("mechanism", [Mechanism.FENTRY, Mechanism.KPROBE])
def test_unavailable_mechanism_is_skipped_with_the_verdict(mechanism: Mechanism) -> None:
    v = probe(mechanism)
    h = programs.hookable(mechanism, "getpid")
    if v.status is Status.AVAILABLE:
        assert h.available
        assert h.target is not None
    else:
        assert not h.available
        assert h.skipped is not None
        assert h.skipped.startswith("skipped: ")
        assert v.detail in h.skipped


def test_uprobe_on_libc_wrapper(exe: Path) -> None:
    require("uprobe")
    h = programs.hookable(Mechanism.UPROBE, "getppid", path="libc", libc=programs.libc_path())
    assert h.available
    assert h.target is not None
    with _obj("getppid", Mechanism.UPROBE, h.target) as obj:
        obj.reset()
        links = obj.attach(Mechanism.UPROBE, "hash", 1)
        try:
            out = driver.run(exe, "getppid", syscall_nr("getppid"), 1000, path="libc")
        finally:
            programs.detach(links)
        assert obj.pid_count(out.pid) == 1000


# --------------------------------------------------------------------------
# the CLI


def _main(args: list[str]) -> int:
    from bpfscope.cli import main

    return main(args)


def test_quick_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require("tracepoint")
    j, c, p = tmp_path / "b.json", tmp_path / "b.csv", tmp_path / "b.svg"
    rc = _main(
        ["bench", "syscalls", "--quick", "getpid", "getppid", "--json", str(j), "--csv", str(c),
         "--plot", str(p)]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 0, out.err
    data = json.loads(j.read_text())
    assert [s["syscall"] for s in data["syscalls"]] == ["getpid", "getppid"]
    for s in data["syscalls"]:
        assert s["real_syscall"] is True
        labels = [r["label"] for r in s["rows"]]
        assert labels[0] == "baseline"
        assert "tracepoint/count" in labels
        assert "tracepoint/count x2" in labels
        for r in s["rows"]:
            assert r["times_s"]["real"]["n"] == data["options"]["reps"]
            if r["work"] == "count":
                assert r["copies_fired_min"] == r["probes"]
        skipped = {x["what"]: x["why"] for x in s["skipped"]}
        for m in ("fentry", "kprobe"):
            if probe(Mechanism(m)).status is Status.UNSUPPORTED:
                assert skipped[m].startswith("skipped: ")
    assert data["environment"]["kernel"]
    assert "study_comparison" in data
    lines = c.read_text().splitlines()
    assert lines[0].startswith("syscall,path,config")
    assert sum(1 for line in lines if line.startswith("getppid,raw,baseline")) == 1
    assert "what tracing one syscall adds" in p.read_text()  # the summary figure
    svg = (tmp_path / "b-detail.svg").read_text()  # one stacked panel per syscall
    assert svg.count("getpid (raw") == 1
    assert svg.count("getppid (raw") == 1
    assert "getpid (nr" in out.out  # the table went to stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["getpidd"], 2, "did you mean getpid"),
        (["--calls", "0", "getpid"], 2, "--calls must be a positive"),
        (["-n", "-5", "getpid"], 2, "--calls must be a positive"),
        (["--reps", "0", "getpid"], 2, "--reps must be a positive"),
        (["--probes", "1,16", "getpid"], 2, "between 1 and 8"),
        (["--probes", "two", "getpid"], 2, "comma-separated whole numbers"),
        (["--work", "heavy", "getpid"], 2, "unknown body heavy"),
        (["--plot", "fig.txt", "getpid"], 2, "must end in .png or .svg"),
        (["--path", "libc", "getcwd"], 2, "no libc wrapper for getcwd"),
        (["--quick", "getpid", "--json", "--csv"], 2, "cannot both go to stdout"),
    ],
)
def test_bad_input(
    args: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = _main(["bench", "syscalls", *args])
    err = capsys.readouterr().err
    assert rc == code
    assert message in err
    assert "Traceback" not in err


def test_no_compiler(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    rc = _main(["bench", "syscalls", "--quick", "getpid"])
    err = capsys.readouterr().err
    assert rc == 4
    assert "not an executable compiler" in err
    assert "Traceback" not in err


def test_nothing_measurable_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    if probe(Mechanism.FENTRY).available or probe(Mechanism.KPROBE).available:
        pytest.skip("fentry or kprobe works here")
    rc = _main(
        ["bench", "syscalls", "--quick", "-n", "1000", "-r", "1", "-m", "fentry", "-m", "kprobe",
         "--no-bpftrace", "getpid"]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 4
    assert "nothing could be measured" in out.err
    assert "fentry" in out.out
    assert "skipped:" in out.out


def test_bpftrace_missing_is_a_note(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    require("raw_tp")
    monkeypatch.setattr("bpfscope.bench.peer.find_bpftrace", lambda: None)
    j = tmp_path / "b.json"
    rc = _main(
        ["bench", "syscalls", "--quick", "-n", "20000", "-r", "1", "-m", "raw_tp", "--work",
         "count", "--probes", "1", "--json", str(j), "getpid"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    data = json.loads(j.read_text())
    assert any("bpftrace is not installed" in n for n in data["notes"])
    assert {"what": "bpftrace", "why": "skipped: bpftrace is not installed (peer column)"} in data[
        "syscalls"
    ][0]["skipped"]
