# Why: the scale benchmark feeds Gate.receive the same bytes NFQUEUE would hand the server: a Linux-like
# IPv4 SYN (MSS, SACK-permitted, timestamps, window scale) with correct checksums. Built with struct only.
import struct

from stealth.core.packet import internet_checksum as _csum

_OPTS = bytes([2, 4, 0x05, 0xB4, 4, 2, 8, 10]) + b"\0" * 8 + bytes([1, 3, 3, 7])


def syn4(src: bytes, dst: bytes, sport: int, dport: int, isn: int, tsval: int = 1) -> bytes:
    opts = _OPTS[:8] + struct.pack("!II", tsval, 0) + _OPTS[16:]
    tcp = struct.pack("!HHIIBBHHH", sport, dport, isn, 0, 10 << 4, 0x02, 64240, 0, 0) + opts
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    c = _csum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return ip + tcp
