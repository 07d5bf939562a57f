# Why: Gate.receive is the one decision every packet gets. These tests drive it with real SYN bytes
# (crafted by scapy, checksums included) and check each rule of docs/PROTOCOL.md section 4: round trips,
# flipped bits, garbage and mutations (a clean DROP, never an exception, no state change), one-time
# counters and the window, replays (a spent token never passes), recovery, port and source binding, NAT
# mode, revocation, sync, and that no repr leaks a key.
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.utils import checksum as scapy_checksum

from stealth.constants import COUNTER_MAX, RECOVERY_SLOT_SKEW
from stealth.core.gate import Decision, Gate, LogAccept, LogRefusal, PersistCounter, Verdict
from stealth.core.packet import Reason
from stealth.core.recovery import recovery_base, recovery_counter
from stealth.core.secret import Secret
from stealth.core.table import ClientSpec, TokenTable
from stealth.core.token import Knock, PortRange, derive
from tests.conftest import scaled
from tests.syns import (
    DST4,
    DST6,
    SRC4,
    SRC6,
    T0,
    gate_for,
    key_of,
    knock_of,
    knock_syn,
    packed,
    spec,
    syn,
    sync,
    tcp_options,
    tokens,
)

W = 16
ALICE = spec("alice", key_of(1), ports=(22, 6379))
BOB = spec("bob", key_of(2), ports=(22,))
NAT = spec("nat", key_of(3), ports=(22,), port_bits=False)
PINNED = spec("pinned", key_of(4), ports=(22,), source=SRC4)

keys = st.binary(min_size=32, max_size=32).map(Secret)


def accept(d: Decision, reason: Reason = Reason.VALID) -> None:
    assert d.verdict is Verdict.ACCEPT, d
    assert d.reason is reason, d


def persists(d: Decision, client: str, counter: int) -> None:
    """The accept carries exactly one PersistCounter, first, for this client and counter."""
    first = d.commands[0]
    assert isinstance(first, PersistCounter), d
    assert (first.client, first.counter) == (client, counter), d
    assert sum(isinstance(c, PersistCounter) for c in d.commands) == 1, d


def drop(d: Decision, reason: Reason | None = None) -> None:
    """A drop: no client, no key, and a command only to log a refused known token (replay, wrong source,
    revoked key)."""
    assert d.verdict is Verdict.DROP, d
    assert d.client is None and d.session_key is None, d
    if d.reason in (Reason.REPLAY, Reason.WRONG_SOURCE, Reason.REVOKED):
        (refusal,) = d.commands
        assert isinstance(refusal, LogRefusal) and refusal.reason is d.reason, d
    else:
        assert d.commands == (), d
    if reason is not None:
        assert d.reason is reason, d


def snapshot(gate: Gate) -> Any:
    """Everything in the table an outsider's packet could change."""
    t = gate.table
    entries = {
        k: (e.name, e.counter, e.spent) for k, e in tokens(t)
    }
    return entries, {n: c.last for n, c in t.clients.items()}


# --- round trips ----------------------------------------------------------------------------------


@given(
    key=keys,
    last=st.integers(0, COUNTER_MAX - W),
    ahead=st.integers(1, W),
    dport=st.integers(1, 65535),
    v6=st.booleans(),
    tsval=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
def test_round_trip(key: Secret, last: int, ahead: int, dport: int, v6: bool, tsval: int | None) -> None:
    client = spec("c", key, ports=(dport,))
    gate = gate_for(client, last=last)
    counter = last + ahead
    knock = derive(key, client.binding, dport, counter)
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    d = gate.receive(knock_syn(knock, src, dst, tsval=tsval), T0)
    accept(d)
    assert d.client == "c"
    persists(d, "c", counter)
    log = LogAccept("c", dport, packed(src), knock.sport or 0, counter, recovery=False)
    assert d.commands[1:] == (log,)
    assert d.session_key == knock.session_key
    assert gate.table.clients["c"].last == counter


def test_every_counter_of_the_window_in_turn_ipv4_and_ipv6() -> None:
    gate = gate_for(ALICE, BOB)
    for counter in range(1, 3 * W):
        for client, (src, dst) in ((ALICE, (SRC4, DST4)), (BOB, (SRC6, DST6))):
            d = gate.receive(knock_syn(knock_of(client, counter), src, dst), T0 + counter)
            accept(d)
            persists(d, client.name, counter)
    assert len(gate.table) <= 2 * W * 3  # alice on 2 ports, bob on 1: bounded, whatever the history


def test_counter_max_is_the_last_one() -> None:
    gate = gate_for(ALICE, last=COUNTER_MAX - 2)
    accept(gate.receive(knock_syn(knock_of(ALICE, COUNTER_MAX)), T0))
    assert gate.table.clients["alice"].last == COUNTER_MAX
    drop(gate.receive(knock_syn(knock_of(ALICE, COUNTER_MAX - 1), src="198.51.100.77"), T0), Reason.REPLAY)


# --- flipped bits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "dst"), [(SRC4, DST4), (SRC6, DST6)])
@pytest.mark.parametrize("counter", [1, 7, W])
def test_every_flipped_isn_or_port_bit_drops(src: str, dst: str, counter: int) -> None:
    gate = gate_for(ALICE, BOB, NAT)
    knock = knock_of(ALICE, counter)
    assert knock.sport is not None
    before = snapshot(gate)
    for bit in range(32):
        d = gate.receive(syn(src, dst, knock.sport, 22, knock.isn ^ (1 << bit)), T0)
        drop(d, Reason.UNKNOWN_TOKEN)
    for bit in range(16):
        d = gate.receive(syn(src, dst, knock.sport ^ (1 << bit), 22, knock.isn), T0)
        drop(d, Reason.UNKNOWN_TOKEN)
    assert snapshot(gate) == before
    accept(gate.receive(knock_syn(knock, src, dst), T0))


def test_every_flipped_isn_bit_drops_in_nat_mode() -> None:
    gate = gate_for(NAT)
    knock = knock_of(NAT, 3)
    for bit in range(32):
        drop(gate.receive(syn(SRC4, DST4, 40000, 22, knock.isn ^ (1 << bit)), T0), Reason.UNKNOWN_TOKEN)
    accept(gate.receive(syn(SRC4, DST4, 40000, 22, knock.isn), T0))


@given(key=keys, counter=st.integers(1, W), bit=st.integers(0, 47), v6=st.booleans())
def test_flipped_bit_drops_property(key: Secret, counter: int, bit: int, v6: bool) -> None:
    client = spec("c", key)
    gate = gate_for(client)
    knock = knock_of(client, counter)
    assert knock.sport is not None
    isn, sport = knock.isn, knock.sport
    if bit < 32:
        isn ^= 1 << bit
    else:
        sport ^= 1 << (bit - 32)
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    d = gate.receive(syn(src, dst, sport, 22, isn), T0)
    drop(d)
    assert d.reason in (Reason.UNKNOWN_TOKEN, Reason.MALFORMED)  # MALFORMED only for source port 0


# --- garbage and mutations ------------------------------------------------------------------------


GARBAGE_GATE = gate_for(ALICE, NAT, PINNED)


@settings(max_examples=scaled(300))
@given(st.binary(max_size=120))
def test_garbage_drops(packet: bytes) -> None:
    gate = GARBAGE_GATE
    before = snapshot(gate)
    d = gate.receive(packet, T0)
    drop(d)
    assert snapshot(gate) == before


def still_a_token_syn(packet: bytes, knock: Knock) -> bool:
    """Oracle, written apart from stealth.core.packet, with scapy's checksum: is `packet` still a bare,
    unfragmented, intact TCP SYN (IPv4, or IPv6 without extension headers) carrying `knock`?"""
    if len(packet) < 20:
        return False
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        (total,) = struct.unpack_from("!H", packet, 2)
        (frag,) = struct.unpack_from("!H", packet, 6)
        if ihl < 20 or total < ihl + 20 or len(packet) < total or frag & 0x3FFF or packet[9] != 6:
            return False
        src, dst, seg = packet[12:16], packet[16:20], packet[ihl:total]
        pseudo = src + dst + bytes([0, 6]) + struct.pack("!H", len(seg))
    elif version == 6:
        if len(packet) < 40:
            return False
        (plen,) = struct.unpack_from("!H", packet, 4)
        if packet[6] != 6 or plen < 20 or len(packet) < 40 + plen:
            return False
        src, dst, seg = packet[8:24], packet[24:40], packet[40 : 40 + plen]
        pseudo = src + dst + struct.pack("!I", len(seg)) + bytes([0, 0, 0, 6])
    else:
        return False
    sport, dport, seq = struct.unpack_from("!HHI", seg)
    offset, flags = seg[12] >> 4, seg[13]
    return (
        offset >= 5
        and len(seg) == offset * 4
        and flags & 0x17 == 0x02
        and dport == knock.dport
        and seq == knock.isn
        and sport == knock.sport
        and int(scapy_checksum(pseudo + seg)) == 0
    )


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 200), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 200), st.just(0)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=8), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 200), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 200), st.integers(1, 4)),
)


def mutate(packet: bytes, ops: list[tuple[str, Any, Any]]) -> bytes:
    b = bytearray(packet)
    for op, a, c in ops:
        if op == "append":
            b += a
        elif not b:
            continue
        elif op == "flip":
            b[a % len(b)] ^= c
        elif op == "set":
            b[a % len(b)] = c
        elif op == "truncate":
            del b[a % len(b) :]
        elif op == "insert":
            b[a % (len(b) + 1) : a % (len(b) + 1)] = c
        elif op == "delete":
            del b[a % len(b) : a % len(b) + c]
    return bytes(b)


@settings(max_examples=scaled(400))
@given(
    counter=st.integers(1, W),
    v6=st.booleans(),
    tsval=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    ops=st.lists(mutation, min_size=1, max_size=4),
)
def test_mutated_syn_drops_unless_it_still_is_a_valid_token_syn(
    counter: int, v6: bool, tsval: int | None, ops: list[tuple[str, Any, Any]]
) -> None:
    knock = knock_of(ALICE, counter)
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    packet = mutate(knock_syn(knock, src, dst, tsval=tsval), ops)
    gate = gate_for(ALICE)
    before = snapshot(gate)
    d = gate.receive(packet, T0)
    if still_a_token_syn(packet, knock):
        accept(d)
        persists(d, "alice", counter)
    else:
        drop(d)
        assert snapshot(gate) == before


def _v4(knock: Knock, **tcp: Any) -> Any:
    fields = {"sport": knock.sport, "dport": knock.dport, "seq": knock.isn, "options": tcp_options(5)}
    return TCP(**(fields | tcp))


def _bad_checksum(k: Knock) -> bytes:
    raw = bytearray(knock_syn(k))
    raw[20 + 16] ^= 0xFF
    return bytes(raw)


def _bad_ihl(k: Knock) -> bytes:
    raw = bytearray(knock_syn(k))
    raw[0] = 0x46
    return bytes(raw)


MUTANTS: dict[str, tuple[Callable[[Knock], bytes], Reason | None]] = {
    "truncated": (lambda k: knock_syn(k)[:-1], Reason.MALFORMED),
    "truncated-v6": (lambda k: knock_syn(k, SRC6, DST6)[:50], Reason.MALFORMED),
    "bad-ihl-low": (lambda k: bytes([0x44]) + knock_syn(k)[1:], Reason.MALFORMED),
    "bad-ihl-high": (_bad_ihl, None),
    "fragment-mf": (lambda k: bytes(IP(src=SRC4, dst=DST4, flags="MF") / _v4(k)), Reason.FRAGMENT),
    "fragment-offset": (lambda k: bytes(IP(src=SRC4, dst=DST4, frag=2) / _v4(k)), Reason.FRAGMENT),
    "v6-hop-by-hop": (
        lambda k: bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / _v4(k)),
        Reason.IPV6_EXTENSION,
    ),
    "v6-dest-opt": (
        lambda k: bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrDestOpt() / _v4(k)),
        Reason.IPV6_EXTENSION,
    ),
    "syn-fin": (lambda k: knock_syn(k, flags="SF"), Reason.NOT_SYN),
    "syn-ack": (lambda k: knock_syn(k, flags="SA"), Reason.NOT_SYN),
    "syn-rst": (lambda k: knock_syn(k, flags="SR"), Reason.NOT_SYN),
    "ack": (lambda k: knock_syn(k, flags="A"), Reason.NOT_SYN),
    "xmas": (lambda k: knock_syn(k, flags="FPU"), Reason.NOT_SYN),
    "null": (lambda k: knock_syn(k, flags=""), Reason.NOT_SYN),
    "syn-with-data": (lambda k: knock_syn(k, payload=b"GET / HTTP/1.0\r\n"), Reason.SYN_WITH_DATA),
    "syn-with-data-v6": (lambda k: knock_syn(k, SRC6, DST6, payload=b"\0"), Reason.SYN_WITH_DATA),
    "bad-checksum": (_bad_checksum, Reason.BAD_CHECKSUM),
    "udp-header": (lambda k: bytes([0x45]) + knock_syn(k)[1:9] + b"\x11" + knock_syn(k)[10:], Reason.NOT_TCP),
}


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_of_a_valid_token_syn_drops_without_spending_it(name: str) -> None:
    build, reason = MUTANTS[name]
    gate = gate_for(ALICE)
    knock = knock_of(ALICE, 2)
    before = snapshot(gate)
    drop(gate.receive(build(knock), T0), reason)
    assert snapshot(gate) == before
    accept(gate.receive(knock_syn(knock), T0 + 1))


# --- replays and retransmissions ------------------------------------------------------------------


def test_same_bytes_twice_is_a_replay() -> None:
    gate = gate_for(ALICE)
    raw = knock_syn(knock_of(ALICE, 1), tsval=1000)
    accept(gate.receive(raw, T0))
    drop(gate.receive(raw, T0 + 1), Reason.REPLAY)
    drop(gate.receive(raw, T0 + 1000), Reason.REPLAY)


@pytest.mark.parametrize("tsval", [None, 999, 1001, 2000, 1000 + 2**31 - 1, 200_000])
@pytest.mark.parametrize("later", [0.001, 1.0, 30.0, 120.0, 10_000.0])
def test_a_spent_token_never_passes_whatever_its_timestamp_or_time(tsval: int | None, later: float) -> None:
    """The timestamp is chosen by the sender and authenticates nothing; the kernel's real resends of an
    accepted SYN are carried by conntrack's mark and never reach the gate (tests/e2e/test_synack_loss.py)."""
    gate = gate_for(ALICE)
    knock = knock_of(ALICE, 1)
    accept(gate.receive(knock_syn(knock, tsval=1000), T0))
    drop(gate.receive(knock_syn(knock, tsval=tsval), T0 + later), Reason.REPLAY)
    assert gate.table.clients["alice"].last == 1


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ({"src": "198.51.100.66"}, Reason.REPLAY),
        ({"dst": "198.51.100.2"}, Reason.REPLAY),
        ({"src": SRC6, "dst": DST6}, Reason.REPLAY),
        ({"sport": "other"}, Reason.UNKNOWN_TOKEN),
    ],
)
def test_same_token_from_another_tuple_drops(where: dict[str, str], reason: Reason) -> None:
    gate = gate_for(ALICE)
    knock = knock_of(ALICE, 1)
    assert knock.sport is not None
    accept(gate.receive(knock_syn(knock, tsval=1000), T0))
    src, dst = where.get("src", SRC4), where.get("dst", DST4)
    sport = knock.sport + 2 if "sport" in where else knock.sport
    drop(gate.receive(syn(src, dst, sport, 22, knock.isn, tsval=2000), T0 + 1), reason)
    # the forger changed nothing: the client's next counter still passes
    accept(gate.receive(knock_syn(knock_of(ALICE, 2), tsval=2000), T0 + 2))


def test_a_replayed_token_from_another_address_before_the_client_is_dropped_too() -> None:
    """An eavesdropper that races the client with its own copy wins nothing it can use elsewhere:
    the first SYN to arrive spends the token and binds it to its tuple."""
    gate = gate_for(ALICE)
    knock = knock_of(ALICE, 1)
    accept(gate.receive(knock_syn(knock, tsval=1000), T0))
    for i in range(5):
        drop(gate.receive(knock_syn(knock, src=f"203.0.113.{i + 1}", tsval=1001 + i), T0 + i), Reason.REPLAY)


# --- counters and the window ----------------------------------------------------------------------


def test_counters_at_or_below_the_accepted_one_never_pass() -> None:
    gate = gate_for(ALICE)
    accept(gate.receive(knock_syn(knock_of(ALICE, 5)), T0))
    for counter in range(1, 6):
        drop(gate.receive(knock_syn(knock_of(ALICE, counter), src="203.0.113.9"), T0), Reason.REPLAY)
        drop(gate.receive(knock_syn(knock_of(ALICE, counter, 6379)), T0), Reason.REPLAY)
    for c in (21, 37, 40):
        accept(gate.receive(knock_syn(knock_of(ALICE, c)), T0))
    for counter in range(1, 41):
        d = gate.receive(knock_syn(knock_of(ALICE, counter), src="203.0.113.9"), T0)
        drop(d, Reason.REPLAY if counter > 40 - W else Reason.UNKNOWN_TOKEN)


@pytest.mark.parametrize("last", [0, 1, 100, 2**40])
def test_window_edge(last: int) -> None:
    gate = gate_for(ALICE, last=last)
    drop(gate.receive(knock_syn(knock_of(ALICE, last + W + 1)), T0), Reason.UNKNOWN_TOKEN)
    accept(gate.receive(knock_syn(knock_of(ALICE, last + W)), T0))
    drop(gate.receive(knock_syn(knock_of(ALICE, last + 2 * W + 1)), T0), Reason.UNKNOWN_TOKEN)
    accept(gate.receive(knock_syn(knock_of(ALICE, last + 2 * W)), T0))
    if last > 0:
        drop(gate.receive(knock_syn(knock_of(ALICE, last)), T0), Reason.UNKNOWN_TOKEN)


def test_window_of_one() -> None:
    gate = gate_for(ALICE, window=1)
    drop(gate.receive(knock_syn(knock_of(ALICE, 2)), T0), Reason.UNKNOWN_TOKEN)
    accept(gate.receive(knock_syn(knock_of(ALICE, 1)), T0))
    accept(gate.receive(knock_syn(knock_of(ALICE, 2)), T0))


@given(st.lists(st.integers(1, 4 * W), min_size=1, max_size=25))
def test_counter_rules_match_a_model(attempts: list[int]) -> None:
    """Each attempt from a fresh address (so no retransmission rule applies): a counter passes iff it is
    in last+1..last+W; spent ones still remembered are REPLAY; all else is UNKNOWN_TOKEN."""
    gate = gate_for(ALICE)
    last = 0
    for i, counter in enumerate(attempts):
        d = gate.receive(knock_syn(knock_of(ALICE, counter), src=f"203.0.113.{i + 1}"), T0 + i)
        if last < counter <= last + W:
            accept(d)
            persists(d, "alice", counter)
            last = counter
        else:
            drop(d, Reason.REPLAY if last - W < counter <= last else Reason.UNKNOWN_TOKEN)
        assert gate.table.clients["alice"].last == last
        assert len(gate.table) <= 2 * W * len(ALICE.ports)


# --- binding --------------------------------------------------------------------------------------


def test_token_for_one_port_does_not_open_another() -> None:
    gate = gate_for(ALICE)
    k22 = knock_of(ALICE, 3, 22)
    assert k22.sport is not None
    drop(gate.receive(syn(SRC4, DST4, k22.sport, 6379, k22.isn), T0), Reason.UNKNOWN_TOKEN)
    k6379 = knock_of(ALICE, 3, 6379)
    assert k6379.sport is not None
    drop(gate.receive(syn(SRC4, DST4, k6379.sport, 22, k6379.isn), T0), Reason.UNKNOWN_TOKEN)
    accept(gate.receive(knock_syn(k22), T0))
    # counters belong to the client, not to a port: 3 is spent on 6379 too
    drop(gate.receive(knock_syn(k6379), T0), Reason.REPLAY)
    accept(gate.receive(knock_syn(knock_of(ALICE, 4, 6379)), T0))


def test_token_for_another_server_id_drops() -> None:
    gate = gate_for(ALICE)
    elsewhere = spec("alice", ALICE.key, ports=(22,), server_id="other.example.org")
    drop(gate.receive(knock_syn(knock_of(elsewhere, 1)), T0), Reason.UNKNOWN_TOKEN)


def test_bound_source() -> None:
    gate = gate_for(PINNED)
    knock = knock_of(PINNED, 1)
    before = snapshot(gate)
    drop(gate.receive(knock_syn(knock, src="198.51.100.11"), T0), Reason.WRONG_SOURCE)
    drop(gate.receive(knock_syn(knock, src=SRC6, dst=DST6), T0), Reason.WRONG_SOURCE)
    assert snapshot(gate) == before
    accept(gate.receive(knock_syn(knock, src=SRC4), T0))
    # the address is inside the MAC: the same key without the binding makes another token
    unbound = knock_of(spec("pinned", PINNED.key), 2)
    drop(gate.receive(knock_syn(unbound, src=SRC4), T0), Reason.UNKNOWN_TOKEN)


def test_bound_ipv6_source() -> None:
    client = spec("six", key_of(9), source=SRC6)
    gate = gate_for(client)
    knock = knock_of(client, 1)
    drop(gate.receive(knock_syn(knock, src="2001:db8::11", dst=DST6), T0), Reason.WRONG_SOURCE)
    accept(gate.receive(knock_syn(knock, src=SRC6, dst=DST6), T0))


@given(sport=st.integers(1, 65535), other=st.integers(1, 65535), v6=st.booleans())
def test_nat_mode_accepts_any_source_port(sport: int, other: int, v6: bool) -> None:
    gate = gate_for(NAT, ALICE)
    knock = knock_of(NAT, 1)
    assert knock.sport is None
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    d = gate.receive(knock_syn(knock, src, dst, sport=sport, tsval=10), T0)
    accept(d)
    assert d.client == "nat"
    persists(d, "nat", 1)
    drop(gate.receive(knock_syn(knock, src, dst, sport=other, tsval=11), T0 + 1), Reason.REPLAY)


def test_nat_mode_and_port_mode_clients_share_a_table() -> None:
    gate = gate_for(NAT, ALICE, BOB)
    for counter in (1, 2, 3):
        accept(gate.receive(knock_syn(knock_of(NAT, counter), sport=33333 + counter), T0))
        accept(gate.receive(knock_syn(knock_of(BOB, counter)), T0))
    # a port-mode token is not a NAT-mode token on another source port
    k = knock_of(BOB, 4)
    assert k.sport is not None
    drop(gate.receive(syn(SRC4, DST4, k.sport + 2, 22, k.isn), T0), Reason.UNKNOWN_TOKEN)


def test_custom_port_range() -> None:
    client = spec("win", key_of(5), port_range=PortRange(49152, 65535, 1))
    knock = knock_of(client, 1)
    assert knock.sport is not None and 49152 <= knock.sport <= 65535
    accept(gate_for(client).receive(knock_syn(knock), T0))


# --- enrolment: revocation and sync ---------------------------------------------------------------


def test_removed_client_drops_at_once() -> None:
    gate = gate_for(ALICE, BOB)
    knock = knock_of(ALICE, 1)
    accept(gate.receive(knock_syn(knock, tsval=1), T0))
    gate.table.remove("alice")
    drop(gate.receive(knock_syn(knock_of(ALICE, 2)), T0), Reason.UNKNOWN_TOKEN)
    drop(gate.receive(knock_syn(knock, tsval=2), T0 + 1), Reason.UNKNOWN_TOKEN)  # not even a replay
    drop(gate.receive(knock_syn(knock_of(ALICE, 3, 6379)), T0), Reason.UNKNOWN_TOKEN)
    assert all(e.name == "bob" for _, e in tokens(gate.table))
    accept(gate.receive(knock_syn(knock_of(BOB, 1)), T0))
    gate.table.remove("alice")  # twice is harmless


def test_sync_revokes_and_enrols() -> None:
    gate = gate_for(ALICE)
    sync(gate.table, [(BOB, 7)])
    drop(gate.receive(knock_syn(knock_of(ALICE, 1)), T0), Reason.REVOKED)  # its live tokens stay, keyless
    assert gate.table.spec_of(gate.table.lookup(22, knock_of(ALICE, 1).isn, knock_of(ALICE, 1).sport or 0)
                              .index).key.value == bytes(32), "a revoked key is not kept"  # type: ignore[union-attr]
    drop(gate.receive(knock_syn(knock_of(ALICE, 1 + 16)), T0), Reason.UNKNOWN_TOKEN)  # beyond its window
    drop(gate.receive(knock_syn(knock_of(BOB, 7)), T0), Reason.REPLAY)
    accept(gate.receive(knock_syn(knock_of(BOB, 8)), T0))
    assert set(gate.table.clients) == {"bob"}


def test_sync_keeps_higher_in_memory_counters() -> None:
    gate = gate_for(ALICE)
    knock5 = knock_of(ALICE, 5)
    accept(gate.receive(knock_syn(knock5, tsval=1), T0))
    sync(gate.table, [(ALICE, 2)])  # a stale store must not roll the counter back
    assert gate.table.clients["alice"].last == 5
    drop(gate.receive(knock_syn(knock_of(ALICE, 3), src="203.0.113.1"), T0), Reason.REPLAY)
    drop(gate.receive(knock_syn(knock_of(ALICE, 5), src="203.0.113.1"), T0), Reason.REPLAY)
    drop(gate.receive(knock_syn(knock5, tsval=2), T0 + 1), Reason.REPLAY)  # state kept
    sync(gate.table, [(ALICE, 0)])
    assert gate.table.clients["alice"].last == 5
    # a changed key re-enrols, still from the higher counter
    rekeyed = spec("alice", key_of(99), ports=ALICE.ports)
    sync(gate.table, [(rekeyed, 1)])
    assert gate.table.clients["alice"].last == 5
    drop(gate.receive(knock_syn(knock_of(ALICE, 6)), T0), Reason.UNKNOWN_TOKEN)
    drop(gate.receive(knock_syn(knock_of(rekeyed, 5)), T0), Reason.REPLAY)
    accept(gate.receive(knock_syn(knock_of(rekeyed, 6)), T0))
    # a higher stored counter (an admin resync) moves the client forward
    sync(gate.table, [(rekeyed, 40)])
    assert gate.table.clients["alice"].last == 40
    drop(gate.receive(knock_syn(knock_of(rekeyed, 40)), T0), Reason.REPLAY)
    accept(gate.receive(knock_syn(knock_of(rekeyed, 40 + W)), T0))


def test_table_rejects_bad_windows() -> None:
    for window in (0, -1, 1025):
        with pytest.raises(ValueError, match="window"):
            TokenTable(window)


# --- secrets stay out of reprs --------------------------------------------------------------------


def _leaks(text: str, secret: bytes) -> bool:
    return any(form in text for form in (secret.hex(), secret.hex().upper(), repr(secret), str(secret)[2:-1]))


def test_reprs_never_show_keys_or_session_keys() -> None:
    raw_key = bytes(range(0x41, 0x61))  # printable, so a raw leak would show as text
    client = ClientSpec("carol", Secret(raw_key), spec("carol").binding, (22,))
    knock = knock_of(client, 1)
    gate = gate_for(client)
    d = gate.receive(knock_syn(knock), T0)
    accept(d)
    assert d.session_key is not None
    session = d.session_key.value
    objects: list[object] = [client, client.key, knock, knock.session_key, d, gate.table.clients["carol"]]
    for obj in objects:
        for text in (repr(obj), str(obj), f"{obj}", f"{obj!r}"):
            assert not _leaks(text, raw_key), text
            assert not _leaks(text, session), text
    assert "carol" in repr(client)
    assert repr(client.key) == "Secret(<32 bytes hidden>)"


# --- recovery -------------------------------------------------------------------------------------

SLOT = 2_900_000  # about unix time 1.74e9 / 600


def recovery_syn(client: ClientSpec, slot: int, dport: int = 22, src: str = SRC4) -> bytes:
    return knock_syn(knock_of(client, recovery_counter(slot), dport), src=src)


def test_a_client_past_the_window_gets_back_in_once_per_slot() -> None:
    gate = gate_for(ALICE, BOB)
    gate.table.set_slot(SLOT)
    accept(gate.receive(knock_syn(knock_of(ALICE, 3)), T0))
    drop(gate.receive(knock_syn(knock_of(ALICE, 3 + W + 1)), T0), Reason.UNKNOWN_TOKEN)  # past the window
    d = gate.receive(recovery_syn(ALICE, SLOT), T0)
    accept(d, Reason.RECOVERY)
    persists(d, "alice", recovery_base(SLOT))
    assert d.commands[1] == LogAccept("alice", 22, packed(SRC4), knock_of(ALICE, recovery_counter(SLOT)).sport
                                      or 0, recovery_base(SLOT), recovery=True)
    assert d.session_key == knock_of(ALICE, recovery_counter(SLOT)).session_key
    # every older counter and the same slot's token are spent; the new window starts at the base
    drop(gate.receive(recovery_syn(ALICE, SLOT), T0), Reason.REPLAY)
    drop(gate.receive(recovery_syn(ALICE, SLOT, src="203.0.113.9"), T0), Reason.REPLAY)
    drop(gate.receive(knock_syn(knock_of(ALICE, 4)), T0), Reason.UNKNOWN_TOKEN)
    drop(gate.receive(recovery_syn(ALICE, SLOT - 1), T0), Reason.REPLAY)  # an older slot moves nothing
    accept(gate.receive(knock_syn(knock_of(ALICE, recovery_base(SLOT) + 1)), T0))
    # the other port of the same client is moved too, and another client is untouched
    accept(gate.receive(knock_syn(knock_of(ALICE, recovery_base(SLOT) + 2, 6379)), T0))
    assert gate.table.clients["bob"].last == 0
    # the next slot (clock skew: the client may be one slot ahead) still gets in, once
    accept(gate.receive(recovery_syn(ALICE, SLOT + 1), T0), Reason.RECOVERY)
    drop(gate.receive(recovery_syn(ALICE, SLOT + 1), T0), Reason.REPLAY)


def test_recovery_tokens_follow_the_slot_and_the_skew() -> None:
    gate = gate_for(BOB)
    gate.table.set_slot(SLOT)
    for slot in (SLOT - RECOVERY_SLOT_SKEW - 1, SLOT + RECOVERY_SLOT_SKEW + 1):
        drop(gate.receive(recovery_syn(BOB, slot), T0), Reason.UNKNOWN_TOKEN)  # out of the clock skew
    gate.table.set_slot(SLOT + 5)
    drop(gate.receive(recovery_syn(BOB, SLOT), T0), Reason.UNKNOWN_TOKEN)  # a recorded one, later
    accept(gate.receive(recovery_syn(BOB, SLOT + 4), T0), Reason.RECOVERY)
    gate.table.remove("bob")
    assert tokens(gate.table) == []  # revocation takes the recovery tokens too
    drop(gate.receive(recovery_syn(BOB, SLOT + 5), T0), Reason.UNKNOWN_TOKEN)


def test_a_table_without_a_slot_holds_no_recovery_tokens() -> None:
    gate = gate_for(BOB)
    drop(gate.receive(recovery_syn(BOB, SLOT), T0), Reason.UNKNOWN_TOKEN)
