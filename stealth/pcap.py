# Why: recorded traffic must enter through the same door as live traffic. This adapter turns a capture
# (pcap or pcapng, read with scapy's raw readers, so malformed packets stay byte-exact) into the bytes
# NFQUEUE would hand the gate: the IP packet, with the link-layer header stripped.
import struct
from collections.abc import Iterator
from pathlib import Path

from stealth.errors import ConfigError

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_ETHERTYPES_IP = (0x0800, 0x86DD)
_VLAN = (0x8100, 0x88A8)


def ip_payload(linktype: int, frame: bytes) -> bytes | None:
    """The IP packet inside one captured frame, or None when it carries no IP."""
    if linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return frame
    if linktype == LINKTYPE_ETHERNET:
        offset, type_at = 14, 12
    elif linktype == LINKTYPE_LINUX_SLL:
        offset, type_at = 16, 14
    elif linktype == LINKTYPE_LINUX_SLL2:
        offset, type_at = 20, 0
    else:
        return None
    if len(frame) < offset:
        return None
    ethertype = struct.unpack_from("!H", frame, type_at)[0]
    while linktype == LINKTYPE_ETHERNET and ethertype in _VLAN and len(frame) >= offset + 4:
        ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    return frame[offset:] if ethertype in _ETHERTYPES_IP else None


def read_ip_packets(path: Path) -> Iterator[tuple[int, float, bytes | None]]:
    """Yield (index, timestamp, IP bytes or None) for every frame in the capture."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapNgReader, RawPcapReader

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    reader_class = RawPcapNgReader if magic == b"\x0a\x0d\x0d\x0a" else RawPcapReader
    try:
        reader = reader_class(str(path))
    except Scapy_Exception as e:
        raise ConfigError(path, f"not a pcap or pcapng capture: {e}") from None
    with reader:
        for index, (frame, meta) in enumerate(reader):
            linktype = int(getattr(meta, "linktype", 0) or getattr(reader, "linktype", LINKTYPE_ETHERNET))
            yield index, _timestamp(meta), ip_payload(linktype, bytes(frame))


def _timestamp(meta: object) -> float:
    sec = getattr(meta, "sec", None)
    if sec is not None:
        return float(sec) + float(getattr(meta, "usec", 0)) / 1e6
    high, low = getattr(meta, "tshigh", 0), getattr(meta, "tslow", 0)
    resolution = float(getattr(meta, "tsresol", 1_000_000))
    return ((high << 32) | low) / resolution
