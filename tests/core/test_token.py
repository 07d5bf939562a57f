# Why: the token derivation is the protocol. Known-answer vectors (tests/vectors.json, made once by
# scripts/gen-vectors and published in docs/PROTOCOL.md) pin every byte of it, a second BLAKE2b
# (PyNaCl's) and a spec-only reimplementation check it independently, and properties check the ISN and
# source-port mapping over random inputs.
import hashlib
import ipaddress
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import nacl.hash
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.encoding import RawEncoder

import stealth.core.token as token_mod
from stealth.constants import (
    COUNTER_MAX,
    ISN_MODULUS,
    KEY_BYTES,
    SESSION_PERSON,
    TOKEN_DIGEST_BYTES,
    TOKEN_PERSON,
)
from stealth.core.secret import Secret
from stealth.core.token import Binding, PortRange, derive, mac, token_bits, token_input

ROOT = Path(__file__).resolve().parents[2]
VECTORS: list[dict[str, Any]] = json.loads((ROOT / "tests" / "vectors.json").read_text())["vectors"]
PROTOCOL_MD = (ROOT / "docs" / "PROTOCOL.md").read_text()
IDS = [f"v{i}" for i in range(1, len(VECTORS) + 1)]

keys = st.binary(min_size=32, max_size=32).map(Secret)
counters = st.integers(1, COUNTER_MAX)
dports = st.integers(1, 65535)
server_ids = st.text(min_size=1, max_size=40).filter(lambda s: 1 <= len(s.encode()) <= 255)
sources = st.one_of(st.none(), st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))


def binding_of(v: dict[str, Any]) -> Binding:
    low, high, step = v["ports"]
    return Binding(
        server_id=v["server_id"],
        port_bits=v["port_bits"],
        ports=PortRange(low, high, step),
        source=ipaddress.ip_address(v["source"]).packed if v["source"] else None,
    )


def nacl_blake2b(data: bytes, key: bytes, person: bytes) -> bytes:
    out: bytes = nacl.hash.blake2b(data, digest_size=32, key=key, person=person, encoder=RawEncoder)
    return out


# --- known-answer vectors -------------------------------------------------------------------------


def test_vector_set_covers_the_cases_the_spec_promises() -> None:
    assert len(VECTORS) >= 6
    assert len({v["key"] for v in VECTORS}) >= 4
    assert len({v["server_id"] for v in VECTORS}) >= 3
    assert len({v["dport"] for v in VECTORS}) >= 3
    counters_seen = {v["counter"] for v in VECTORS}
    assert {1, 2, COUNTER_MAX} <= counters_seen
    bound = [ipaddress.ip_address(v["source"]) for v in VECTORS if v["source"]]
    assert {a.version for a in bound} == {4, 6}
    assert any(not v["port_bits"] for v in VECTORS)
    assert all(v["sport"] is None for v in VECTORS if not v["port_bits"])


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_mac_input(v: dict[str, Any]) -> None:
    assert token_input(binding_of(v), v["dport"], v["counter"]).hex() == v["mac_input"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_token_isn_port_and_session_key(v: dict[str, Any]) -> None:
    raw = bytes.fromhex(v["key"])
    assert len(raw) == KEY_BYTES, "a vector's key is a client key"
    key = Secret(raw)
    data = bytes.fromhex(v["mac_input"])
    assert mac(key, TOKEN_PERSON, data, TOKEN_DIGEST_BYTES).hex() == v["token"]
    knock = derive(key, binding_of(v), v["dport"], v["counter"])
    assert (knock.counter, knock.dport) == (v["counter"], v["dport"])
    assert knock.isn == v["isn"]
    assert knock.sport == v["sport"]
    assert knock.session_key.value.hex() == v["session_key"]


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_vector_matches_a_spec_only_reimplementation_with_pynacl(v: dict[str, Any]) -> None:
    """Recompute every output from the byte layout in docs/PROTOCOL.md with PyNaCl's BLAKE2b."""
    key = bytes.fromhex(v["key"])
    sid = v["server_id"].encode()
    src = ipaddress.ip_address(v["source"]).packed if v["source"] else b""
    data = bytes([1, len(sid)]) + sid + struct.pack(">HQ", v["dport"], v["counter"]) + bytes([len(src)]) + src
    assert data.hex() == v["mac_input"]
    token = nacl_blake2b(data, key, b"stealth-token-v1")
    assert token.hex() == v["token"]
    assert nacl_blake2b(data, key, b"stealth-sess-v01").hex() == v["session_key"]
    assert v["isn"] == 1 + int.from_bytes(token[0:4], "big") % (2**32 - 1)
    low, high, step = v["ports"]
    if v["port_bits"]:
        assert v["sport"] == low + step * (int.from_bytes(token[4:8], "big") % ((high - low) // step + 1))


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_hashlib_blake2b_equals_pynacl_on_the_vectors(v: dict[str, Any]) -> None:
    key = bytes.fromhex(v["key"])
    data = bytes.fromhex(v["mac_input"])
    for person in (TOKEN_PERSON, SESSION_PERSON):
        ours = hashlib.blake2b(data, digest_size=32, key=key, person=person).digest()
        assert ours == nacl_blake2b(data, key, person)
        assert mac(Secret(key), person, data, 32) == ours


@pytest.mark.parametrize("v", VECTORS, ids=IDS)
def test_protocol_md_publishes_the_vector(v: dict[str, Any]) -> None:
    section = PROTOCOL_MD[PROTOCOL_MD.index("## 6. Known-answer vectors") :]
    for field in ("key", "mac_input", "token", "session_key"):
        assert f"{field:<12} {v[field]}" in section, field
    assert f"isn          {v['isn']} (0x{v['isn']:08x})" in section
    assert f"counter      {v['counter']}\n" in section
    if v["sport"] is not None:
        assert f"sport        {v['sport']}\n" in section


def test_gen_vectors_check_passes() -> None:
    """The generator agrees with the stored vectors and the generated blocks of PROTOCOL.md."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-vectors"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_protocol_md_entropy_table() -> None:
    isn_bits = math.log2(2**32 - 1)
    port_bits = math.log2(14116)
    assert f"{isn_bits + port_bits:.2f}" == "45.79"
    # W = 16 live counters and 3 recovery tokens per client and port
    for clients, expected in ((1, "41.54"), (1000, "31.57"), (100_000, "24.93")):
        bits = isn_bits + port_bits - math.log2(19 * clients)
        assert f"{bits:.2f}" == expected
        assert f"| on (45.79 bits) | {clients:,} | {expected} | {2.0**bits:.3g} |" in PROTOCOL_MD


# --- entropy and port range -----------------------------------------------------------------------


def test_token_bits() -> None:
    assert PortRange().count == 14116
    assert token_bits(Binding("s")) == pytest.approx(45.785, abs=1e-3)
    assert token_bits(Binding("s", port_bits=False)) == pytest.approx(math.log2(ISN_MODULUS))
    assert token_bits(Binding("s", ports=PortRange(49152, 65535, 1))) == pytest.approx(32 + 14, abs=1e-6)


def test_default_port_range_is_linux_even_ephemeral_ports() -> None:
    r = PortRange()
    ports = [r.port(v) for v in range(r.count)]
    assert ports[0] == 32768 and ports[-1] == 60998
    assert sorted(set(ports)) == list(range(32768, 60999, 2))
    assert r.port(r.count) == 32768


@pytest.mark.parametrize(
    ("low", "high", "step"), [(0, 10, 1), (10, 9, 1), (1, 65536, 1), (1024, 2048, 3), (1024, 2048, 0)]
)
def test_bad_port_range(low: int, high: int, step: int) -> None:
    with pytest.raises(ValueError, match="source-port range"):
        PortRange(low, high, step)


# --- mapping properties ---------------------------------------------------------------------------


@given(keys, server_ids, dports, counters, sources, st.booleans())
def test_isn_and_port_follow_the_token_words(
    key: Secret, sid: str, dport: int, counter: int, source: bytes | None, port_bits: bool
) -> None:
    binding = Binding(sid, port_bits=port_bits, source=source)
    knock = derive(key, binding, dport, counter)
    token = mac(key, TOKEN_PERSON, token_input(binding, dport, counter), 32)
    w0, w1 = struct.unpack(">II", token[:8])
    assert knock.isn == 1 + w0 % (2**32 - 1)
    assert 1 <= knock.isn <= 2**32 - 1
    if port_bits:
        assert knock.sport == 32768 + 2 * (w1 % 14116)
        assert knock.sport is not None and 32768 <= knock.sport <= 60998 and knock.sport % 2 == 0
    else:
        assert knock.sport is None
    session = mac(key, SESSION_PERSON, token_input(binding, dport, counter), 32)
    assert knock.session_key.value == session != token


@pytest.mark.parametrize(
    ("w0", "isn"), [(0, 1), (1, 2), (2**32 - 2, 2**32 - 1), (2**32 - 1, 1)]
)
def test_isn_edges_never_zero(monkeypatch: pytest.MonkeyPatch, w0: int, isn: int) -> None:
    """The token's first word maps onto 1..2^32-1: ISN 0 never appears, 2^32-1 wraps to 1."""
    monkeypatch.setattr(token_mod, "mac", lambda *a: struct.pack(">II", w0, 14115) + bytes(24))
    knock = derive(Secret(bytes(32)), Binding("s"), 22, 1)
    assert knock.isn == isn
    assert knock.sport == 60998


@given(keys, server_ids, dports, counters, sources, st.data())
def test_every_input_field_changes_the_token(
    key: Secret, sid: str, dport: int, counter: int, source: bytes | None, data: st.DataObject
) -> None:
    binding = Binding(sid, source=source)
    base = derive(key, binding, dport, counter)

    def differs(k: Secret, b: Binding, p: int, c: int) -> bool:
        other = derive(k, b, p, c)
        return (other.isn, other.sport) != (base.isn, base.sport) and other.session_key != base.session_key

    other_key = data.draw(keys.filter(lambda k: k != key))
    assert differs(other_key, binding, dport, counter)
    assert differs(key, Binding(sid + "x", source=source), dport, counter)
    assert differs(key, binding, dport % 65535 + 1, counter)
    assert differs(key, binding, dport, counter - 1 if counter > 1 else 2)
    other_src = data.draw(sources.filter(lambda s: s != source))
    assert differs(key, Binding(sid, source=other_src), dport, counter)


def test_counter_extremes() -> None:
    key = Secret(bytes(range(32)))
    assert derive(key, Binding("s"), 22, COUNTER_MAX).counter == COUNTER_MAX
    with pytest.raises(ValueError, match="counter"):
        token_input(Binding("s"), 22, COUNTER_MAX + 1)
    with pytest.raises(ValueError, match="counter"):
        token_input(Binding("s"), 22, -1)


@pytest.mark.parametrize("dport", [0, -1, 65536])
def test_bad_dport(dport: int) -> None:
    with pytest.raises(ValueError, match="destination port"):
        token_input(Binding("s"), dport, 1)


@pytest.mark.parametrize("sid", ["", "x" * 256, "é" * 128])
def test_bad_server_id(sid: str) -> None:
    with pytest.raises(ValueError, match="server id"):
        Binding(sid)


def test_server_id_limit_is_in_utf8_bytes() -> None:
    assert token_input(Binding("x" * 255), 22, 1)[1] == 255
    assert token_input(Binding("é" * 127), 22, 1)[1] == 254


@pytest.mark.parametrize("source", [b"", b"\x01\x02\x03", b"\x00" * 5, b"\x00" * 15])
def test_bad_source(source: bytes) -> None:
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        Binding("s", source=source)


def test_secret_holds_bytes_only() -> None:
    with pytest.raises(TypeError):
        Secret("00" * 32)  # type: ignore[arg-type]
