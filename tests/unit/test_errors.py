"""Errors carry errno, libbpf's message and what to do; the CLI shows them
as one message and an exit code."""

from __future__ import annotations

import errno

import pytest

from bpfscope import cli, errors, system
from bpfscope import libbpf as bpf
from bpfscope.ladder import LadderError
from bpfscope.sysnames import UnknownSyscall, syscall_nr


def test_bpf_error_names_errno_and_hint() -> None:
    exc = bpf.BpfError("load BPF object flows", errno.EPERM, libbpf_log=["verifier says no"])
    text = str(exc)
    assert "load BPF object flows" in text
    assert "EPERM" in text
    assert "CAP_BPF" in text  # the hint says what to do
    assert exc.errno == errno.EPERM
    assert exc.libbpf_log == ["verifier says no"]


def test_bpf_error_knows_enotsupp() -> None:
    assert "ENOTSUPP" in str(bpf.BpfError("batch", bpf.ENOTSUPP))


@pytest.mark.parametrize(
    ("exc", "code", "needle"),
    [
        (errors.UserError("bad flag", errors.EXIT_USAGE), errors.EXIT_USAGE, "bad flag"),
        (bpf.LibbpfUnavailable("apt install libbpf1"), errors.EXIT_UNSUPPORTED, "libbpf1"),
        (system.BtfMissing("CONFIG_DEBUG_INFO_BTF"), errors.EXIT_UNSUPPORTED, "BTF"),
        (LadderError("no usable rung"), errors.EXIT_UNSUPPORTED, "rung"),
        (bpf.BpfError("attach", errno.EPERM), errors.EXIT_PRIVILEGES, "EPERM"),
        (bpf.BpfError("attach", errno.ENOENT), errors.EXIT_FAILURE, "ENOENT"),
    ],
)
def test_explain_maps_errors_to_messages_and_codes(
    exc: BaseException, code: int, needle: str
) -> None:
    explained = errors.explain(exc)
    assert explained is not None
    message, got = explained
    assert got == code
    assert needle in message


def test_explain_leaves_programming_errors_alone() -> None:
    assert errors.explain(ZeroDivisionError()) is None


def test_unknown_syscall_offers_close_matches() -> None:
    with pytest.raises(UnknownSyscall) as info:
        syscall_nr("getpdi", "x86_64")
    assert "getpid" in info.value.matches
    assert "did you mean" in str(info.value)


def test_require_privileges_names_missing_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "effective_caps", lambda: 0)
    with pytest.raises(errors.UserError) as info:
        system.require_privileges()
    assert info.value.exit_code == errors.EXIT_PRIVILEGES
    assert "CAP_BPF" in str(info.value)
    assert "CAP_PERFMON" in str(info.value)


def test_cli_bad_flag_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "no such option" in err.lower()
    assert "Traceback" not in err


def test_cli_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["frobnicate"]) == 2
    assert "No such command" in capsys.readouterr().err


def test_cli_turns_user_errors_into_messages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*_: object, **__: object) -> None:
        raise system.BtfMissing("no BTF here; pass --btf FILE")

    monkeypatch.setattr("bpfscope.doctor_cli.run_doctor", boom)
    assert cli.main(["doctor"]) == errors.EXIT_UNSUPPORTED
    err = capsys.readouterr().err
    assert err.startswith("bpfscope: error: no BTF here")
    assert "Traceback" not in err


def test_libbpf_log_reaches_logging_and_the_exception(caplog: pytest.LogCaptureFixture) -> None:
    """Opening garbage makes libbpf complain; its words land in the
    bpfscope.libbpf logger and in the exception the user sees."""
    import logging

    with (
        caplog.at_level(logging.DEBUG, logger="bpfscope.libbpf"),
        pytest.raises(bpf.BpfError) as info,
    ):
        bpf.BpfObject.open_bytes(b"\x7fELF not really an object", name="garbage")
    assert info.value.libbpf_log, "libbpf's message was not captured"
    assert any("libbpf" in r.message or "elf" in r.message.lower() for r in caplog.records)
    assert "open BPF object garbage" in str(info.value)
    assert "BPF object format invalid" in str(info.value)  # libbpf's own errno, named


@pytest.mark.parametrize(("machine", "says_arm64"), [("aarch64", True), ("x86_64", False)])
def test_trampoline_attach_enotsupp_is_explained(
    monkeypatch: pytest.MonkeyPatch, machine: str, says_arm64: bool
) -> None:
    # Debian 12's arm64 6.1 loads fentry programs but refuses to attach them.
    from bpfscope import features

    monkeypatch.setattr(system, "arch", lambda: machine)
    exc = bpf.BpfError("attach probe_fentry", bpf.ENOTSUPP)
    why = features._explain_attach_failure(features.Mechanism.FENTRY, exc)
    assert "cannot attach BPF trampolines" in why
    assert ("arm64 that needs Linux 6.4+" in why) is says_arm64
