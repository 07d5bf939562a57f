# Why: parse_syn is the first code every packet from the network reaches. These tests check it against
# scapy-built packets (an independent encoder), name the reason for each kind of malformed or non-SYN
# input, and fuzz it: garbage in gives a Reason or a Syn, never an exception.
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw

from stealth.core.packet import Reason, Syn, internet_checksum, parse_syn
from tests.conftest import scaled
from tests.syns import DST4, DST6, SRC4, SRC6, packed, syn

FAST = settings(max_examples=scaled(150))


def parsed(packet: bytes) -> Syn:
    result = parse_syn(packet)
    assert isinstance(result, Syn), result
    return result


@pytest.mark.parametrize(("src", "dst", "family"), [(SRC4, DST4, 4), (SRC6, DST6, 6)])
def test_parses_a_linux_like_syn(src: str, dst: str, family: int) -> None:
    raw = syn(src, dst, 40000, 22, 0xDEADBEEF, tsval=123456)
    s = parsed(raw)
    assert (s.family, s.src, s.dst) == (family, packed(src), packed(dst))
    assert (s.sport, s.dport, s.isn) == (40000, 22, 0xDEADBEEF)
    assert s.tcp_offset == (20 if family == 4 else 40)
    assert s.tcp_header_len == 40
    assert s.raw == raw
    assert s.tsval() == 123456
    assert s.checksum_ok()


@FAST
@given(
    st.booleans(),
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.integers(0, 2**32 - 1),
    st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    st.sampled_from(["S", "SP", "SU", "SE", "SC", "SEC"]),
)
def test_parse_round_trip(v6: bool, sport: int, dport: int, isn: int, tsval: int | None, flags: str) -> None:
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    s = parsed(syn(src, dst, sport, dport, isn, tsval=tsval, flags=flags))
    assert (s.sport, s.dport, s.isn, s.tsval()) == (sport, dport, isn, tsval)
    assert s.checksum_ok()


def test_trailing_link_padding_is_trimmed() -> None:
    raw = syn(SRC4, DST4, 40000, 22, 7)
    s = parsed(raw + b"\0" * 6)
    assert s.raw == raw
    assert s.checksum_ok()


def test_ipv4_options_move_the_tcp_header() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4, options=b"\x01\x01\x01\x00") / TCP(sport=40000, dport=22, seq=9))
    s = parsed(raw)
    assert (s.tcp_offset, s.sport, s.dport, s.isn) == (24, 40000, 22, 9)
    assert s.checksum_ok()


# --- reasons --------------------------------------------------------------------------------------


@pytest.mark.parametrize("src", [SRC4, SRC6])
def test_every_truncation_is_malformed(src: str) -> None:
    raw = syn(src, DST6 if ":" in src else DST4, 40000, 22, 7)
    for n in range(len(raw)):
        assert parse_syn(raw[:n]) is Reason.MALFORMED, n


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ihl_below_five_is_malformed(ihl: int) -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7))
    raw[0] = 0x40 | ihl
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


def test_ihl_beyond_the_packet_is_malformed() -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7))
    raw[0] = 0x4F  # 60-byte IP header: no room for TCP in a 60-byte packet
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


@pytest.mark.parametrize("total", [0, 20, 39])
def test_ipv4_total_length_below_headers_is_malformed(total: int) -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7))
    raw[2:4] = struct.pack("!H", total)
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


def test_ipv4_total_length_beyond_the_packet_is_malformed() -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7, tsval=None))
    raw[2:4] = struct.pack("!H", len(raw) + 4)
    # with 4 claimed bytes more than the TCP header, it is a SYN with data before it is short
    assert parse_syn(bytes(raw)) is Reason.SYN_WITH_DATA


def test_ipv6_payload_length_below_tcp_header_is_malformed() -> None:
    raw = bytearray(syn(SRC6, DST6, 40000, 22, 7))
    raw[4:6] = struct.pack("!H", 19)
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


@pytest.mark.parametrize("version", [0, 5, 7, 15])
def test_other_ip_versions_are_malformed(version: int) -> None:
    raw = bytearray(syn(SRC6, DST6, 40000, 22, 7))
    raw[0] = (version << 4) | (raw[0] & 0x0F)
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


@pytest.mark.parametrize("fields", [{"flags": "MF"}, {"frag": 1}, {"frag": 8191}, {"flags": "MF", "frag": 3}])
def test_ipv4_fragments(fields: dict[str, Any]) -> None:
    raw = bytes(IP(src=SRC4, dst=DST4, **fields) / TCP(sport=40000, dport=22, seq=7))
    assert parse_syn(raw) is Reason.FRAGMENT


def test_df_and_reserved_bits_are_not_fragments() -> None:
    for ip_flags in ("DF", "evil", "DF+evil"):
        raw = bytes(IP(src=SRC4, dst=DST4, flags=ip_flags) / TCP(sport=40000, dport=22, seq=7))
        assert isinstance(parse_syn(raw), Syn), ip_flags


def test_tiny_fragments_are_fragments_not_malformed() -> None:
    head = bytes(IP(src=SRC4, dst=DST4, proto=6, flags="MF"))
    assert len(head) == 20
    assert parse_syn(head) is Reason.FRAGMENT
    assert parse_syn(bytes(IP(src=SRC4, dst=DST4, proto=6, frag=1) / (b"\0" * 8))) is Reason.FRAGMENT
    bare6 = bytes(IPv6(src=SRC6, dst=DST6, nh=44, plen=0))
    assert len(bare6) == 40
    assert parse_syn(bare6) is Reason.IPV6_EXTENSION
    assert parse_syn(bytes(IPv6(src=SRC6, dst=DST6, nh=6, plen=0))) is Reason.MALFORMED


@pytest.mark.parametrize(
    "ext", [IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrFragment, IPv6ExtHdrDestOpt]
)
def test_ipv6_extension_headers(ext: type) -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / ext() / TCP(sport=40000, dport=22, seq=7))
    assert parse_syn(raw) is Reason.IPV6_EXTENSION


def test_not_tcp() -> None:
    assert parse_syn(bytes(IP(src=SRC4, dst=DST4) / UDP(sport=40000, dport=22) / (b"x" * 20))) is (
        Reason.NOT_TCP
    )
    assert parse_syn(bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=40000, dport=22) / (b"x" * 20))) is (
        Reason.NOT_TCP
    )


@pytest.mark.parametrize("src", [SRC4, SRC6])
@pytest.mark.parametrize("flags", ["SF", "SA", "SR", "F", "", "FPU", "A", "R", "SAFR", "SFPU"])
def test_anything_but_a_bare_syn_is_not_syn(src: str, flags: str) -> None:
    dst = DST6 if ":" in src else DST4
    assert parse_syn(syn(src, dst, 40000, 22, 7, flags=flags)) is Reason.NOT_SYN


@pytest.mark.parametrize("src", [SRC4, SRC6])
def test_syn_with_data(src: str) -> None:
    dst = DST6 if ":" in src else DST4
    assert parse_syn(syn(src, dst, 40000, 22, 7, payload=b"x")) is Reason.SYN_WITH_DATA


@pytest.mark.parametrize(("sport", "dport"), [(0, 22), (40000, 0)])
def test_zero_ports_are_malformed(sport: int, dport: int) -> None:
    assert parse_syn(syn(SRC4, DST4, sport, dport, 7)) is Reason.MALFORMED


@pytest.mark.parametrize("offset", [0, 1, 4])
def test_tcp_data_offset_below_five_is_malformed(offset: int) -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7))
    raw[20 + 12] = (offset << 4) | (raw[20 + 12] & 0x0F)
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


def test_tcp_header_beyond_ip_length_is_malformed() -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7))
    raw[20 + 12] = (15 << 4) | (raw[20 + 12] & 0x0F)  # 60-byte TCP header in a 40-byte segment
    assert parse_syn(bytes(raw)) is Reason.MALFORMED


# --- checksum and options -------------------------------------------------------------------------


def test_internet_checksum_rfc1071_example() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")  # RFC 1071 section 3: sum ddf2 (ones' complement)
    assert internet_checksum(data) == 0xFFFF - 0xDDF2
    assert internet_checksum(data + struct.pack("!H", 0xFFFF - 0xDDF2)) == 0
    assert internet_checksum(b"\x01") == 0xFEFF  # odd length pads a zero byte


@pytest.mark.parametrize("src", [SRC4, SRC6])
def test_checksum_detects_any_single_bit_flip_in_the_segment(src: str) -> None:
    dst = DST6 if ":" in src else DST4
    raw = syn(src, dst, 40000, 22, 7)
    t = parsed(raw).tcp_offset
    for i in range(t, len(raw)):
        for bit in range(8):
            bad = bytearray(raw)
            bad[i] ^= 1 << bit
            result = parse_syn(bytes(bad))
            assert not (isinstance(result, Syn) and result.checksum_ok()), (i, bit)


def test_checksum_covers_the_pseudo_header() -> None:
    raw = bytearray(syn(SRC4, DST4, 40000, 22, 7))
    raw[15] ^= 1  # source address; the IP header checksum is the kernel's business, not ours
    assert not parsed(bytes(raw)).checksum_ok()


@pytest.mark.parametrize(
    ("options", "tsval"),
    [
        (b"", None),
        (b"\x08\x0a\x00\x00\x00\x2a\x00\x00\x00\x00\x01\x01", 42),
        (b"\x01\x01\x08\x0a\xff\xff\xff\xff\x00\x00\x00\x00", 0xFFFFFFFF),
        (b"\x02\x04\x05\xb4\x01\x01\x08\x0a\x00\x00\x01\x00\x00\x00\x00\x00\x01\x01\x01\x00", 256),
        (b"\x00\x00\x00\x00\x08\x0a\x00\x00\x00\x2a\x00\x00\x00\x00\x00\x00", None),  # EOL first
        (b"\x08\x09\x00\x00\x00\x2a\x00\x00\x00\x00\x00\x00", None),  # wrong timestamp length
        (b"\x02\x00\x08\x0a\x00\x00\x00\x2a\x00\x00\x00\x00", None),  # option length < 2
        (b"\x02\x30\x00\x00", None),  # option runs past the header
        (b"\x01\x01\x01\x08", None),  # kind with no length byte
    ],
)
def test_tsval(options: bytes, tsval: int | None) -> None:
    assert len(options) % 4 == 0
    tcp = TCP(sport=40000, dport=22, seq=7, flags="S", dataofs=5 + len(options) // 4)
    raw = bytes(IP(src=SRC4, dst=DST4) / tcp / Raw(options))  # raw option bytes inside the header
    s = parsed(raw)
    assert s.tcp_header_len == 20 + len(options)
    assert s.tsval() == tsval


# --- fuzz -----------------------------------------------------------------------------------------


def _check(result: Syn | Reason, packet: bytes) -> None:
    if isinstance(result, Reason):
        return
    assert result.family in (4, 6)
    assert result.raw == packet[: len(result.raw)]
    assert len(result.raw) == result.tcp_offset + result.tcp_header_len
    assert result.sport != 0 and result.dport != 0
    flags = result.raw[result.tcp_offset + 13]
    assert flags & 0x17 == 0x02
    result.tsval()
    result.checksum_ok()


@settings(max_examples=scaled(400))
@given(st.binary(max_size=120))
def test_garbage_never_raises(packet: bytes) -> None:
    _check(parse_syn(packet), packet)


@settings(max_examples=scaled(300))
@given(
    st.sampled_from([4, 6]),
    st.binary(min_size=60, max_size=100),
)
def test_garbage_with_a_plausible_ip_header_never_raises(version: int, body: bytes) -> None:
    """Random bytes behind a version nibble that is right, so the fuzz gets past the first check."""
    packet = bytes([(version << 4) | (body[0] & 0x0F)]) + body[1:]
    _check(parse_syn(packet), packet)
