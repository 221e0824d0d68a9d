"""Ladder selection with a fake probe result (no kernel needed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfscope.features import Mechanism, Status, Verdict
from bpfscope.ladder import Hook, LadderError, Rung, choose

LADDER = (
    Rung(Mechanism.FENTRY, "p_fentry", "tcp_sendmsg"),
    Rung(Mechanism.TP_BTF, "p_tp_btf", "sock_send_length"),
    Rung(Mechanism.RAW_TP, "p_raw_tp", "sock_send_length"),
    Rung(Mechanism.TRACEPOINT, "p_tp", "sock:sock_send_length"),
    Rung(Mechanism.KPROBE, "p_kprobe", "tcp_sendmsg"),
)
SEND = Hook("send", LADDER)


def fake(available: set[Mechanism]):  # type: ignore[no-untyped-def]
    def verdict(m: Mechanism) -> Verdict:
        if m in available:
            return Verdict(m, Status.AVAILABLE, "fake: works")
        return Verdict(m, Status.UNSUPPORTED, "fake: EPERM", 1, "EPERM", "a better kernel")

    return verdict


def no_missing(_: Rung) -> None:
    return None


def test_this_machine_picks_tp_btf_when_fentry_is_listed_first() -> None:
    here = {Mechanism.TRACEPOINT, Mechanism.RAW_TP, Mechanism.TP_BTF, Mechanism.UPROBE}
    [c] = choose([SEND], verdict=fake(here), missing=no_missing)
    assert c.rung is not None
    assert c.rung.mechanism is Mechanism.TP_BTF
    assert [r.mechanism for r, _ in c.skipped] == [Mechanism.FENTRY]
    assert "EPERM" in c.skipped[0][1]


def test_missing_target_moves_down_the_ladder() -> None:
    # e.g. a 5.15 kernel: fentry works but sock_send_length does not exist
    def missing(r: Rung) -> str | None:
        return "no such tracepoint" if "sock_send_length" in r.target else None

    avail = {Mechanism.TRACEPOINT, Mechanism.TP_BTF, Mechanism.KPROBE}
    [c] = choose([SEND], verdict=fake(avail), missing=missing)
    assert c.rung is not None
    assert c.rung.mechanism is Mechanism.KPROBE


def test_force_picks_that_rung_or_explains() -> None:
    avail = {Mechanism.TP_BTF, Mechanism.RAW_TP}
    [c] = choose([SEND], verdict=fake(avail), missing=no_missing, force=Mechanism.RAW_TP)
    assert c.rung is not None
    assert c.rung.mechanism is Mechanism.RAW_TP
    with pytest.raises(LadderError, match=r"--attach fentry.*EPERM"):
        choose([SEND], verdict=fake(avail), missing=no_missing, force=Mechanism.FENTRY)
    with pytest.raises(LadderError, match="has no uprobe programs"):
        choose([SEND], verdict=fake(avail), missing=no_missing, force=Mechanism.UPROBE)


def test_force_leaves_hooks_without_that_mechanism_alone() -> None:
    state = Hook("state", (Rung(Mechanism.TRACEPOINT, "p_state", "sock:inet_sock_set_state"),))
    avail = {Mechanism.TRACEPOINT, Mechanism.RAW_TP}
    send, st_choice = choose(
        [SEND, state], verdict=fake(avail), missing=no_missing, force=Mechanism.RAW_TP
    )
    assert send.rung is not None
    assert send.rung.mechanism is Mechanism.RAW_TP
    assert st_choice.rung is not None
    assert st_choice.rung.mechanism is Mechanism.TRACEPOINT


def test_required_hook_without_rung_fails_and_optional_is_off() -> None:
    with pytest.raises(LadderError, match="no usable rung for hook 'send'"):
        choose([SEND], verdict=fake(set()), missing=no_missing)
    optional = Hook("send", LADDER, required=False)
    [c] = choose([optional], verdict=fake(set()), missing=no_missing)
    assert c.rung is None
    assert len(c.skipped) == len(LADDER)


def test_force_keeps_an_optional_hook_without_that_mechanism_optional() -> None:
    """``--attach tracepoint`` with an accept hook of function rungs only
    that cannot load here: the hook is off, not an error; an optional hook
    whose forced rung fails is an error (the user asked for that rung)."""
    accept = Hook(
        "accept",
        (
            Rung(Mechanism.FEXIT, "p_fexit", "inet_csk_accept"),
            Rung(Mechanism.KRETPROBE, "p_kretprobe", "inet_csk_accept"),
        ),
        required=False,
    )
    avail = {Mechanism.TRACEPOINT}
    _, c = choose(
        [SEND, accept], verdict=fake(avail), missing=no_missing, force=Mechanism.TRACEPOINT
    )
    assert c.rung is None
    optional_send = Hook("send", LADDER, required=False)
    with pytest.raises(LadderError, match="--attach raw_tp: no usable rung for hook 'send'"):
        choose([optional_send], verdict=fake(avail), missing=no_missing, force=Mechanism.RAW_TP)


def test_refused_program_is_excluded_on_retry() -> None:
    avail = set(Mechanism)
    [c] = choose([SEND], verdict=fake(avail), missing=no_missing, excluded=frozenset({"p_fentry"}))
    assert c.rung is not None
    assert c.rung.mechanism is Mechanism.TP_BTF


@given(st.sets(st.sampled_from([r.mechanism for r in LADDER]), min_size=1))
def test_choice_is_always_the_first_available_rung(avail: set[Mechanism]) -> None:
    [c] = choose([SEND], verdict=fake(avail), missing=no_missing)
    expected = next(r for r in LADDER if r.mechanism in avail)
    assert c.rung == expected
    assert all(r.mechanism not in avail for r, _ in c.skipped)


GROUPED = Hook(
    "send",
    (
        Rung(
            Mechanism.FENTRY,
            "f_tcp",
            "tcp_sendmsg",
            companions=(("f_udp", "udp_sendmsg"), ("f_udp6", "udpv6_sendmsg")),
        ),
        Rung(Mechanism.TP_BTF, "t_send", "sock_send_length"),
    ),
)


def test_companions_need_every_target() -> None:
    def missing(r: Rung) -> str | None:
        return "no such function" if r.target == "udpv6_sendmsg" else None

    from bpfscope.ladder import target_missing

    avail = {Mechanism.FENTRY, Mechanism.TP_BTF}
    [c] = choose([GROUPED], verdict=fake(avail), missing=lambda r: next(
        (missing(p) for p in r.parts() if missing(p)), None
    ))  # fmt: skip
    assert c.rung is not None
    assert c.rung.mechanism is Mechanism.TP_BTF
    assert GROUPED.rungs[0].programs == ("f_tcp", "f_udp", "f_udp6")
    assert target_missing(Rung(Mechanism.UPROBE, "u", "/nonexistent:f")) is not None


def test_refusing_a_companion_excludes_the_whole_rung() -> None:
    avail = {Mechanism.FENTRY, Mechanism.TP_BTF}
    [c] = choose([GROUPED], verdict=fake(avail), missing=no_missing, excluded=frozenset({"f_udp"}))
    assert c.rung is not None
    assert c.rung.mechanism is Mechanism.TP_BTF


def test_refused_extras_are_dropped_before_any_rung(monkeypatch: pytest.MonkeyPatch) -> None:
    """A load that fails with extras is retried on the same rungs without
    them; only a failure without extras moves a hook down the ladder."""
    from bpfscope import ladder
    from bpfscope import libbpf as bpf
    from bpfscope.ladder import Extras, load_object

    loads: list[tuple[str, frozenset[str], dict[str, object]]] = []

    class FakeProgram:
        def attach_to(self, kind: str, target: str) -> None:
            pass

    class FakeObj:
        def __init__(self, rung_program: str, also: frozenset[str], rodata: dict[str, object]):
            self.entry = (rung_program, also, rodata)

        def load(self) -> None:
            loads.append(self.entry)
            if self.entry[1]:  # the kernel refuses the extra program
                raise bpf.BpfError("load", 1, libbpf_log=["prog 'x_iter': failed to load: -1"])

        def program(self, name: str) -> FakeProgram:
            return FakeProgram()

        def close(self) -> None:
            pass

    def fake_open(tool, choices, rodata, max_entries, btf_path, also_load=frozenset()):  # type: ignore[no-untyped-def]
        (c,) = choices
        return FakeObj(c.rung.program, also_load, dict(rodata))

    monkeypatch.setattr(ladder, "_open_configured", fake_open)
    real_choose = ladder.choose
    monkeypatch.setattr(
        ladder, "choose", lambda *a, **kw: real_choose(*a, **kw, missing=no_missing)
    )
    monkeypatch.setattr(ladder.system, "btf_path", lambda custom=None: None)
    monkeypatch.setattr(ladder.system, "ensure_tracefs", lambda: None)
    extra = Extras(rodata={"turbo": 1}, programs=frozenset({"x_iter"}), description="turbo")
    avail = {Mechanism.TP_BTF, Mechanism.RAW_TP}
    tool = load_object("t", [SEND], verdict=fake(avail), extras=lambda _: extra)
    assert loads == [
        ("p_tp_btf", frozenset({"x_iter"}), {"turbo": 1}),
        ("p_tp_btf", frozenset(), {}),
    ]
    assert tool.extras == Extras()
    assert tool.rungs() == {"send": "tp_btf"}
