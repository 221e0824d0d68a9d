"""Decoding map values and link info from type models, with fake data."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from bpfscope import objects
from bpfscope.introspect import decode as dec
from bpfscope.introspect.dump import MapDecoder
from bpfscope.introspect.links import arm_for, decode_link, string_fields, summarize
from bpfscope.introspect.names import KernelNames
from bpfscope.introspect.types import (
    Array,
    Enum,
    Float,
    Int,
    Member,
    Opaque,
    Ptr,
    Struct,
    type_name,
)

U8 = Int(1, name="unsigned char", alias="__u8")
U16 = Int(2, name="unsigned short", alias="__u16")
BE16 = Int(2, name="unsigned short", alias="__be16", big_endian=True)
U32 = Int(4, name="unsigned int", alias="__u32")
BE32 = Int(4, name="unsigned int", alias="__be32", big_endian=True)
S32 = Int(4, signed=True, name="int", alias="__s32")
U64 = Int(8, name="unsigned long long", alias="__u64")
CHAR = Int(1, signed=True, name="char", char=True)


def m(name: str, offset: int, t: object, bits: int = 0) -> Member:
    assert isinstance(t, Int | Float | Enum | Ptr | Array | Struct | Opaque)
    return Member(name, offset * 8, t, bits)


def test_ints_signed_unsigned_and_big_endian() -> None:
    assert dec.decode(U32, struct.pack("<I", 0xDEADBEEF)) == 0xDEADBEEF
    assert dec.decode(S32, struct.pack("<i", -7)) == -7
    assert dec.decode(BE16, struct.pack(">H", 8080)) == 8080
    assert dec.decode(U16, struct.pack(">H", 8080)) == 36895
    assert dec.decode(Int(1, name="_Bool", boolean=True), b"\x01") is True
    assert dec.decode(Int(3, name="odd"), b"\x01\x02\x03") == "01 02 03"


def test_short_buffer_falls_back_to_hex() -> None:
    assert dec.decode(U64, b"\x01\x02") == "01 02"


def test_char_arrays_are_strings_unless_binary() -> None:
    comm = Array(CHAR, 16)
    assert dec.decode(comm, b"curl".ljust(16, b"\0")) == "curl"
    assert dec.decode(comm, b"\0" * 16) == ""
    binary = bytes(range(1, 17))
    assert dec.decode(comm, binary) == binary.hex(" ")
    # garbage after the NUL is not text
    assert dec.decode(Array(CHAR, 4), b"a\0\x01\x02") == "61 00 01 02"


@pytest.mark.parametrize(
    ("name", "t", "raw", "expected"),
    [
        ("saddr", BE32, ipaddress.IPv4Address("10.1.2.3").packed, "10.1.2.3"),
        ("daddr", U32, ipaddress.IPv4Address("192.168.0.1").packed, "192.168.0.1"),
        ("src_ip", U32, ipaddress.IPv4Address("127.0.0.1").packed, "127.0.0.1"),
        ("remote_addr4", U32, ipaddress.IPv4Address("1.2.3.4").packed, "1.2.3.4"),
        ("daddr6", Array(U8, 16), ipaddress.IPv6Address("2001:db8::1").packed, "2001:db8::1"),
        ("saddr_v6", Array(U32, 4), ipaddress.IPv6Address("fe80::2").packed, "fe80::2"),
        ("ip", Array(U8, 4), bytes([8, 8, 4, 4]), "8.8.4.4"),
        (
            "addr",
            Array(U8, 16),
            ipaddress.IPv6Address("::ffff:10.0.0.1").packed,
            "::ffff:10.0.0.1",
        ),
        (
            "whatever",
            Struct(16, (m("u6_addr8", 0, Array(U8, 16)),), name="in6_addr"),
            ipaddress.IPv6Address("::1").packed,
            "::1",
        ),
    ],
)
def test_ip_fields_recognised(name: str, t: object, raw: bytes, expected: str) -> None:
    assert isinstance(t, Int | Array | Struct)
    assert dec.decode(t, raw, name) == expected


@pytest.mark.parametrize("name", ["count", "zip", "skip", "tip_count", "ipsum", "addresses"])
def test_non_ip_fields_stay_numbers(name: str) -> None:
    assert dec.decode(U32, struct.pack("<I", 5), name) == 5


def test_printable_char_addr_stays_a_string() -> None:
    assert dec.decode(Array(CHAR, 16), b"example.org".ljust(16, b"\0"), "addr") == "example.org"
    raw = ipaddress.IPv6Address("2001:db8::7").packed
    assert dec.decode(Array(CHAR, 16), raw, "addr") == "2001:db8::7"


def test_enum_pointer_float() -> None:
    state = Enum(4, (("IDLE", 0), ("BUSY", 1)), name="state")
    assert dec.decode(state, struct.pack("<I", 1)) == "BUSY"
    assert dec.decode(state, struct.pack("<I", 9)) == 9
    neg = Enum(4, (("NEG", -1),), signed=True)
    assert dec.decode(neg, struct.pack("<i", -1)) == "NEG"
    assert dec.decode(Ptr(target="task_struct"), struct.pack("<Q", 0xFFFF0000)) == "0xffff0000"
    assert dec.decode(Float(8, name="double"), struct.pack("<d", 1.5)) == 1.5
    assert dec.decode(Float(4, name="float"), struct.pack("<f", 0.25)) == 0.25
    assert dec.decode(Opaque(2, "fwd"), b"\xab\xcd") == "ab cd"


def test_struct_with_bitfields_nested_and_anonymous_union() -> None:
    inner = Struct(8, (m("lo", 0, U32), m("hi", 4, U32)), name="inner")
    anon = Struct(4, (m("as_u32", 0, U32), m("as_s32", 0, S32)), union=True)
    t = Struct(
        20,
        (
            m("count", 0, U64),
            m("inner", 8, inner),
            m("", 16, anon),
        ),
        name="v",
    )
    # bitfields addressed in bits from the struct start
    bits = Struct(
        1,
        (Member("a", 0, U8, 3), Member("b", 3, U8, 5)),
        name="bits",
    )
    raw = struct.pack("<QIIi", 9, 1, 2, -1)
    assert dec.decode(t, raw) == {
        "count": 9,
        "inner": {"lo": 1, "hi": 2},
        "as_u32": 0xFFFFFFFF,
        "as_s32": -1,
    }
    assert dec.decode(bits, bytes([(21 << 3) | 3])) == {"a": 3, "b": 21}
    signed_bits = Struct(1, (Member("x", 0, Int(1, signed=True, name="char"), 4),))
    assert dec.decode(signed_bits, b"\x0f") == {"x": -1}


def test_type_names() -> None:
    assert type_name(U32) == "__u32"
    assert type_name(Struct(4, (), name="k")) == "struct k"
    assert type_name(Struct(4, (), union=True)) == "union (anon)"
    assert type_name(Enum(4, (), name="e")) == "enum e"
    assert type_name(Array(Int(1, name="char", char=True), 16)) == "char[16]"
    assert type_name(Ptr(target="sock")) == "sock *"


def test_format_value_one_line() -> None:
    v = {"a": 1, "s": "curl", "ip": "10.0.0.1", "l": [1, 2], "e": "", "q": "a=b"}
    assert dec.format_value(v) == "{a=1, s=curl, ip=10.0.0.1, l=[1, 2], e='', q='a=b'}"


def test_map_decoder_hex_and_percpu() -> None:
    d = MapDecoder(None, None, percpu=False)
    e = d.entry(b"\x01\x00\x00\x00", b"\xef\xbe\xad\xde")
    assert (e.key, e.value) == ("01 00 00 00", "ef be ad de")
    d = MapDecoder(U32, U64, percpu=True)
    e = d.entry(struct.pack("<I", 3), [struct.pack("<Q", 5), struct.pack("<Q", 7)])
    assert (e.key, e.value) == (3, [5, 7])
    assert e.to_json() == {"key": 3, "value": [5, 7]}
    assert e.value_hex == ["05 00 00 00 00 00 00 00", "07 00 00 00 00 00 00 00"]


# --------------------------------------------------------------------------
# BTF of the shipped test object: model, layout and decoding agree with C


def test_model_of_progstest_value_from_object_btf() -> None:
    from bpfscope import libbpf as bpf
    from bpfscope.introspect.types import from_btf

    with bpf.BpfObject.open_bytes(objects.object_bytes("progstest"), name="progstest") as obj:
        btf = obj.btf()
        assert btf is not None
        tid = btf.find("progstest_value", bpf.BTF_KIND_STRUCT)
        assert tid is not None
        t = from_btf(btf, tid)
        size, layout = btf.struct_layout("progstest_value")
    assert isinstance(t, Struct)
    assert t.size == size == 88
    by_name = {mem.name: mem for mem in t.members}
    for name, (offset, _size) in layout.items():
        assert by_name[name].offset_bits // 8 == offset
    assert isinstance(by_name["dport"].type, Int)
    assert by_name["dport"].type.big_endian
    assert by_name["dport"].type.alias == "__be16"
    assert isinstance(by_name["state"].type, Enum)
    assert dict(by_name["state"].type.values) == {
        "PROGSTEST_IDLE": 0,
        "PROGSTEST_BUSY": 1,
        "PROGSTEST_DONE": 2,
    }
    assert (by_name["flag_a"].bitfield_size, by_name["flag_b"].bitfield_size) == (3, 5)
    raw = bytearray(88)
    struct.pack_into("<Qi", raw, 0, 1, -2)
    raw[12:16] = bytes([10, 0, 0, 9])
    raw[32:36] = b"bash"
    struct.pack_into(">H", raw, 50, 443)
    struct.pack_into("<I", raw, 52, 2)
    raw[80] = (1 << 3) | 7
    v = dec.decode(t, bytes(raw))
    assert v["count"] == 1
    assert v["delta"] == -2
    assert v["saddr"] == "10.0.0.9"
    assert v["daddr"] == "::"
    assert v["comm"] == "bash"
    assert v["dport"] == 443
    assert (v["state"], v["flag_a"], v["flag_b"]) == ("PROGSTEST_DONE", 7, 1)


# --------------------------------------------------------------------------
# names


def test_kernel_names_from_enumerators() -> None:
    k = KernelNames.from_enums(
        {
            "prog": [("BPF_PROG_TYPE_UNSPEC", 0), ("BPF_PROG_TYPE_KPROBE", 2)],
            "map": [("BPF_MAP_TYPE_HASH", 1), ("__MAX_BPF_MAP_TYPE", 2)],
            "attach": [("BPF_TRACE_RAW_TP", 23), ("__MAX_BPF_ATTACH_TYPE", 60)],
            "link": [("BPF_LINK_TYPE_PERF_EVENT", 7), ("__MAX_BPF_LINK_TYPE", 8)],
        }
    )
    assert k.prog_type(2) == "kprobe"
    assert k.map_type(1) == "hash"
    assert k.map_type(2) == "type 2"  # the __MAX sentinel is not a type
    assert k.attach_type(23) == "trace_raw_tp"
    assert k.link_type(7) == "perf_event"
    assert k.perf_event_type(1) == "type 1"
    assert k.value("map", "hash") == 1
    assert k.value("map", "nope") is None


# --------------------------------------------------------------------------
# link info


def _fake_link_model() -> Struct:
    raw_tp = Struct(16, (m("tp_name", 0, U64), m("tp_name_len", 8, U32)))
    tracing = Struct(
        12, (m("attach_type", 0, U32), m("target_obj_id", 4, U32), m("target_btf_id", 8, U32))
    )
    tp = Struct(16, (m("tp_name", 0, U64), m("name_len", 8, U32), m("cookie", 12, U32)))
    uprobe = Struct(
        24,
        (m("file_name", 0, U64), m("name_len", 8, U32), m("offset", 12, U32), m("cookie", 16, U64)),
    )
    pe_union = Struct(24, (m("uprobe", 0, uprobe), m("tracepoint", 0, tp)), union=True)
    perf_event = Struct(32, (m("type", 0, U32), m("", 8, pe_union)))
    union = Struct(
        32,
        (m("raw_tracepoint", 0, raw_tp), m("tracing", 0, tracing), m("perf_event", 0, perf_event)),
        union=True,
    )
    return Struct(48, (m("type", 0, U32), m("id", 4, U32), m("prog_id", 8, U32), m("", 16, union)))


NAMES = KernelNames.from_enums(
    {
        "link": [
            ("BPF_LINK_TYPE_RAW_TRACEPOINT", 1),
            ("BPF_LINK_TYPE_TRACING", 2),
            ("BPF_LINK_TYPE_PERF_EVENT", 7),
        ],
        "attach": [("BPF_TRACE_FENTRY", 24)],
        "perf_event": [("BPF_PERF_EVENT_UPROBE", 1), ("BPF_PERF_EVENT_TRACEPOINT", 5)],
    }
)


def test_string_fields_pair_pointers_with_lengths() -> None:
    model = _fake_link_model()
    found = arm_for(model, "raw_tracepoint")
    assert found is not None
    base, arm = found
    assert base == 16
    assert string_fields(arm, base) == [("tp_name", 16, "tp_name_len", 24)]


def test_decode_raw_tracepoint_link_with_second_call() -> None:
    model = _fake_link_model()
    raw = struct.pack("<III4xQI", 1, 10, 20, 0, 12).ljust(48, b"\0")
    calls = []

    def fetch(buffers: list[tuple[int, int, int]]) -> tuple[bytes, list[bytes]]:
        calls.append(buffers)
        return raw, [b"task_rename\0".ljust(4096, b"\0")]

    d = decode_link(1, raw, fetch, names=NAMES, model=model)
    assert calls == [[(16, 24, 4096)]]
    assert d.type_name == "raw_tracepoint"
    assert d.fields == {"tp_name": "task_rename"}
    assert d.target == "raw_tp task_rename"


def test_decode_link_without_second_call_drops_pointers() -> None:
    raw = struct.pack("<III4xQI", 1, 10, 20, 0xFFFF, 12).ljust(48, b"\0")
    d = decode_link(1, raw, None, names=NAMES, model=_fake_link_model())
    assert d.fields == {}


def test_decode_perf_event_uprobe_link() -> None:
    model = _fake_link_model()
    # perf_event.type = uprobe (1); uprobe.offset = 0x1234 at 16 + 8 + 12
    raw = bytearray(48)
    struct.pack_into("<III", raw, 0, 7, 3, 4)
    struct.pack_into("<I", raw, 16, 1)
    struct.pack_into("<I", raw, 16 + 8 + 12, 0x1234)

    def fetch(buffers: list[tuple[int, int, int]]) -> tuple[bytes, list[bytes]]:
        assert [(p, n) for p, n, _ in buffers] == [(24, 32)]
        return bytes(raw), [b"/usr/lib/libc.so.6\0"]

    d = decode_link(7, bytes(raw), fetch, names=NAMES, model=model)
    assert d.fields == {
        "type": "uprobe",
        "uprobe": {"file_name": "/usr/lib/libc.so.6", "offset": 0x1234, "cookie": 0},
    }
    assert d.target == "uprobe /usr/lib/libc.so.6+0x1234"


def test_decode_tracing_link_names_attach_type() -> None:
    raw = struct.pack("<III4xIII", 2, 1, 2, 24, 0, 0).ljust(48, b"\0")
    d = decode_link(2, raw, None, names=NAMES, model=_fake_link_model())
    assert d.attach_type == "trace_fentry"
    assert d.fields["attach_type"] == "trace_fentry"
    assert d.target.startswith("trace_fentry")


def test_unknown_link_type_is_not_an_error() -> None:
    d = decode_link(99, b"\0" * 48, None, names=NAMES, model=_fake_link_model())
    assert (d.type_name, d.fields, d.target) == ("type 99", {}, "")


@pytest.mark.parametrize(
    ("type_name", "fields", "expected"),
    [
        ("iter", {"target_name": "task"}, "iter task"),
        ("kprobe_multi", {"count": 3}, "kprobe_multi 3 functions"),
        (
            "perf_event",
            {"type": "kprobe", "kprobe": {"func_name": "tcp_sendmsg", "offset": 0}},
            "kprobe tcp_sendmsg",
        ),
        (
            "perf_event",
            {"type": "tracepoint", "tracepoint": {"tp_name": "sys_enter"}},
            "tracepoint sys_enter",
        ),
        (
            "netfilter",
            {"pf": 2, "hooknum": 1, "priority": -100},
            "netfilter pf 2 hook 1 priority -100",
        ),
        ("xdp", {"ifindex": 1}, "xdp lo"),
        ("somethingnew", {"a": 1, "b": "x"}, "somethingnew a=1 b=x"),
    ],
)
def test_summaries(type_name: str, fields: dict[str, object], expected: str) -> None:
    assert summarize(type_name, fields) == expected


def test_real_kernel_link_info_layout_if_available() -> None:
    """The running kernel's struct bpf_link_info has the arms we rely on."""
    from bpfscope.introspect.links import link_info_model

    model = link_info_model()
    if model is None:
        pytest.skip("no kernel BTF readable here")
    found = arm_for(model, "raw_tracepoint")
    assert found is not None
    base, arm = found
    assert base == 16
    assert [f[0] for f in string_fields(arm, base)] == ["tp_name"]
    assert arm_for(model, "perf_event") is not None
