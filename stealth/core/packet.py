# Why: the server sees raw IP bytes (from NFQUEUE or a pcap) and must classify them without trusting a
# single field. Cheap checks come first and return a Reason value, never an exception, so any garbage
# costs a few comparisons. Options and the checksum are read only for packets that hit the token table.
import enum
import struct
from dataclasses import dataclass

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10
_SYN_MASK = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK  # what iptables --syn looks at

IPPROTO_TCP = 6
_TCPOPT_EOL = 0
_TCPOPT_NOP = 1
_TCPOPT_TIMESTAMP = 8

_ipv4_head = struct.Struct("!BxHxxHxB")  # version/ihl, total length, flags/fragment, protocol
_ipv6_head = struct.Struct("!B3xHB")  # version..., payload length, next header
_tcp_head = struct.Struct("!HHIxxxxH")  # sport, dport, seq, data offset/flags


class Reason(enum.StrEnum):
    """Why the gate decided as it did. Values are stable: logs, status and pcap manifests use them."""

    VALID = "valid"
    RECOVERY = "recovery"
    MALFORMED = "malformed"
    NOT_TCP = "not_tcp"
    FRAGMENT = "fragment"
    IPV6_EXTENSION = "ipv6_extension"
    NOT_SYN = "not_syn"
    SYN_WITH_DATA = "syn_with_data"
    UNKNOWN_TOKEN = "unknown_token"  # noqa: S105 -- a reason name, not a secret
    REPLAY = "replay"
    WRONG_SOURCE = "wrong_source"
    REVOKED = "revoked"  # a token of a revoked key, or of a rotated client's old key
    BAD_CHECKSUM = "bad_checksum"
    PERSIST_FAILED = "persist_failed"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Syn:
    """A well-formed bare TCP SYN: the fields a token check needs, plus the bytes for later checks."""

    family: int  # 4 or 6
    src: bytes
    dst: bytes
    sport: int
    dport: int
    isn: int
    raw: bytes  # the IP packet, trimmed to its stated length
    tcp_offset: int
    tcp_header_len: int

    def tsval(self) -> int | None:
        """The TCP timestamp option's TSval, or None when absent or the options are malformed."""
        opts = self.raw[self.tcp_offset + 20 : self.tcp_offset + self.tcp_header_len]
        i = 0
        while i < len(opts):
            kind = opts[i]
            if kind == _TCPOPT_EOL:
                return None
            if kind == _TCPOPT_NOP:
                i += 1
                continue
            if i + 1 >= len(opts):
                return None
            size = opts[i + 1]
            if size < 2 or i + size > len(opts):
                return None
            if kind == _TCPOPT_TIMESTAMP and size == 10:
                tsval: int = struct.unpack_from("!I", opts, i + 2)[0]
                return tsval
            i += size
        return None

    def checksum_ok(self) -> bool:
        """True when the TCP checksum over the pseudo-header is right. A pass over the whole packet: the gate
        checks it only after a table hit."""
        segment = self.raw[self.tcp_offset :]
        proto_len = struct.pack("!HH", IPPROTO_TCP, len(segment))
        return internet_checksum(self.src + self.dst + proto_len + segment) == 0


def internet_checksum(data: bytes) -> int:
    """RFC 1071 ones'-complement sum; 0 over a packet that includes its own correct checksum."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def parse_syn(packet: bytes) -> Syn | Reason:
    """Classify raw IP bytes: a bare SYN (SYN set; ACK, RST, FIN clear; no data) or a drop reason."""
    n = len(packet)
    if n < 20:
        return Reason.MALFORMED
    version = packet[0] >> 4
    if version == 4:
        vihl, total, frag, proto = _ipv4_head.unpack_from(packet)
        t = (vihl & 0x0F) * 4
        if t < 20 or total < t or n < t:
            return Reason.MALFORMED
        # A fragment is a fragment however short: its payload is not a TCP header, so the TCP length
        # checks below do not apply to it (tiny fragments are the classic filter-evasion trick).
        if frag & 0x3FFF:
            return Reason.FRAGMENT
        if proto != IPPROTO_TCP:
            return Reason.NOT_TCP
        if total < t + 20 or n < t + 20:
            return Reason.MALFORMED
        src, dst = packet[12:16], packet[16:20]
        family = 4
    elif version == 6:
        if n < 40:
            return Reason.MALFORMED
        _, payload, nexthdr = _ipv6_head.unpack_from(packet)
        if nexthdr != IPPROTO_TCP:  # checked before the TCP length, as for IPv4 fragments
            return Reason.IPV6_EXTENSION if nexthdr in (0, 43, 44, 50, 51, 60, 135) else Reason.NOT_TCP
        if n < 60:
            return Reason.MALFORMED
        t = 40
        total = 40 + payload
        if total < 60:
            return Reason.MALFORMED
        src, dst = packet[8:24], packet[24:40]
        family = 6
    else:
        return Reason.MALFORMED
    sport, dport, isn, off_flags = _tcp_head.unpack_from(packet, t)
    hlen = (off_flags >> 12) * 4
    if hlen < 20 or t + hlen > total:
        return Reason.MALFORMED
    if off_flags & _SYN_MASK != TCP_SYN:
        return Reason.NOT_SYN
    if total != t + hlen:
        return Reason.SYN_WITH_DATA
    if n < total or sport == 0 or dport == 0:
        return Reason.MALFORMED
    return Syn(family, src, dst, sport, dport, isn, packet[:total], t, hlen)
