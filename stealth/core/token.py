# Why: the token is the whole protocol. This module derives it (and the session key) from a client key,
# the server id, the destination port, the counter and optionally the client's source address, and maps
# it onto the two fields the kernel's own SYN lets a client choose: the ISN and the source port.
# Specified with known-answer vectors in docs/PROTOCOL.md; BLAKE2b here is the standard library's (the
# same function PyNaCl's nacl.hash.blake2b computes; tests check both agree) because the client imports
# this module on every ssh login. It is taken from _blake2, the module hashlib.blake2b comes from:
# `import hashlib` also loads OpenSSL's _hashlib, +2.5 ms of stealth-connect's start on the test VM.
# Records rather than dataclasses for the same reason (stealth/core/record.py).
from __future__ import annotations

import math
import struct

from stealth.constants import (
    COUNTER_MAX,
    DEFAULT_PORT_HIGH,
    DEFAULT_PORT_LOW,
    DEFAULT_PORT_STEP,
    ISN_MODULUS,
    KEY_ID_PERSON,
    PROTOCOL_VERSION,
    SESSION_KEY_BYTES,
    SESSION_PERSON,
    TOKEN_DIGEST_BYTES,
    TOKEN_PERSON,
)
from stealth.core.record import Record, set_field
from stealth.core.secret import Secret

try:
    from _blake2 import blake2b  # hashlib.blake2b is this very function
except ImportError:  # pragma: no cover -- an interpreter built without it
    from hashlib import blake2b

TYPE_CHECKING = False  # typing's import costs ~3.4 ms at start; mypy treats this name as True
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_SERVER_ID_BYTES = 255


class PortRange(Record):
    """The source ports a client OS's connect() picks from: low, low+step, ..., <= high."""

    __slots__ = ("high", "low", "step")
    low: int
    high: int
    step: int

    def __init__(self, low: int = DEFAULT_PORT_LOW, high: int = DEFAULT_PORT_HIGH,
                 step: int = DEFAULT_PORT_STEP) -> None:
        set_field(self, "low", low)
        set_field(self, "high", high)
        set_field(self, "step", step)
        if not (1 <= self.low <= self.high <= 65535) or not (1 <= self.step <= 2):
            raise ValueError(f"bad source-port range {self.low}-{self.high} step {self.step}")

    @property
    def count(self) -> int:
        return (self.high - self.low) // self.step + 1

    @property
    def bits(self) -> float:
        """log2(count): the source port's share of a token's bits."""
        return math.log2(self.count)

    def port(self, value: int) -> int:
        """The source port a token word selects: low + step * (value mod count)."""
        return self.low + self.step * (value % self.count)


LINUX_PORTS = PortRange()  # the default (immutable, so one instance serves every Binding)


class Binding(Record):
    """What a token is bound to, beyond the key and counter."""

    __slots__ = ("port_bits", "ports", "server_id", "source")
    server_id: str
    port_bits: bool
    ports: PortRange
    source: bytes | None  # packed IPv4/IPv6 address when source binding is on

    def __init__(self, server_id: str, port_bits: bool = True, ports: PortRange = LINUX_PORTS,
                 source: bytes | None = None) -> None:
        set_field(self, "server_id", server_id)
        set_field(self, "port_bits", port_bits)
        set_field(self, "ports", ports)
        set_field(self, "source", source)
        sid = self.server_id.encode()
        if not sid or len(sid) > MAX_SERVER_ID_BYTES:
            raise ValueError("server id must be 1..255 bytes of UTF-8")
        if self.source is not None and len(self.source) not in (4, 16):
            raise ValueError("a bound source address is 4 or 16 bytes")


class Knock(Record):
    """What one counter value means on the wire, plus the session key both ends derive."""

    __slots__ = ("counter", "dport", "isn", "session_key", "sport")
    _hidden = frozenset({"session_key"})
    counter: int
    dport: int
    isn: int
    sport: int | None  # None: the client leaves the source port to its kernel (NAT mode)
    session_key: Secret

    def __init__(self, counter: int, dport: int, isn: int, sport: int | None, session_key: Secret) -> None:
        set_field(self, "counter", counter)
        set_field(self, "dport", dport)
        set_field(self, "isn", isn)
        set_field(self, "sport", sport)
        set_field(self, "session_key", session_key)


def token_input(binding: Binding, dport: int, counter: int) -> bytes:
    """The MAC input: version | len(sid) | sid | dport | counter | len(src) | src."""
    if not 0 < dport < 65536:
        raise ValueError(f"destination port {dport} out of range")
    if not 0 <= counter <= COUNTER_MAX:
        raise ValueError("counter out of 64-bit range")
    sid = binding.server_id.encode()
    src = binding.source or b""
    return (
        struct.pack("!BB", PROTOCOL_VERSION, len(sid))
        + sid
        + struct.pack("!HQB", dport, counter, len(src))
        + src
    )


def mac(key: Secret, person: bytes, data: bytes, size: int) -> bytes:
    """Keyed BLAKE2b of `data`, `size` bytes, separated from other uses of the key by `person` (16 bytes).
    Every derivation goes through it."""
    return blake2b(data, digest_size=size, key=key.value, person=person).digest()


def key_id(key: Secret) -> str:
    """A public 16-hex-digit name for a key (a keyed hash of nothing): names its counter file."""
    return mac(key, KEY_ID_PERSON, b"", 8).hex()


def wire(key: Secret, binding: Binding, dport: int, counter: int) -> tuple[int, int | None]:
    """The token's wire image only: (ISN, source port or None). What the server's table precomputes."""
    token = mac(key, TOKEN_PERSON, token_input(binding, dport, counter), TOKEN_DIGEST_BYTES)
    word0, word1 = struct.unpack_from("!II", token)
    return 1 + word0 % ISN_MODULUS, binding.ports.port(word1) if binding.port_bits else None


def wire_series(key: Secret, binding: Binding, dport: int) -> Callable[[int], tuple[int, int | None]]:
    """wire() for one (key, binding, dport) and many counters: the keyed BLAKE2b state over the input's
    fixed prefix is computed once and copied per counter (incremental hashing gives the same digest).
    This is what lets the server precompute millions of tokens at start."""
    prefix = token_input(binding, dport, 0)
    at = len(prefix) - 9 - len(binding.source or b"")  # offset of the 8-byte counter
    base = blake2b(prefix[:at], digest_size=TOKEN_DIGEST_BYTES, key=key.value, person=TOKEN_PERSON)
    suffix = prefix[at + 8 :]
    pack, unpack = struct.Struct("!Q").pack, struct.Struct("!II").unpack_from
    low, step, count = binding.ports.low, binding.ports.step, binding.ports.count

    def one(counter: int) -> tuple[int, int | None]:
        h = base.copy()
        h.update(pack(counter) + suffix)  # struct.error outside 0 .. 2^64-1
        word0, word1 = unpack(h.digest())
        return 1 + word0 % ISN_MODULUS, low + step * (word1 % count)

    def isn_only(counter: int) -> tuple[int, int | None]:
        h = base.copy()
        h.update(pack(counter) + suffix)
        return 1 + unpack(h.digest())[0] % ISN_MODULUS, None

    return one if binding.port_bits else isn_only


def session_key(key: Secret, binding: Binding, dport: int, counter: int) -> Secret:
    """The session key for one counter and destination port (derived on demand, e.g. on accept)."""
    return Secret(mac(key, SESSION_PERSON, token_input(binding, dport, counter), SESSION_KEY_BYTES))


def derive(key: Secret, binding: Binding, dport: int, counter: int) -> Knock:
    """Token -> (ISN, source port) and the session key, for one counter and destination port."""
    isn, sport = wire(key, binding, dport, counter)
    return Knock(counter, dport, isn, sport, session_key(key, binding, dport, counter))


def token_bits(binding: Binding) -> float:
    """Bits an off-path guesser must hit for one token: ISN bits plus source-port bits."""
    return math.log2(ISN_MODULUS) + (binding.ports.bits if binding.port_bits else 0.0)
