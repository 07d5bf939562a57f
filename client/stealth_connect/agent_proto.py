# Why: the one message the client agent understands, written down once for both ends. A request names
# only an address family and an ISN: the agent never learns keys, profiles, counters, ports or
# destinations, and there is nothing else to ask of it. Fixed sizes, so a seqpacket read either is
# exactly one request or is refused.
#
#   greeting  agent -> client, once per connection: 1 byte, GREETING_OK or GREETING_REFUSED
#   request   client -> agent: MAGIC (4 bytes) | family (1: 4 or 6) | zero (3) | ISN (u32, network order)
#   reply     agent -> client: 1 byte status; with STATUS_OK, one fd in SCM_RIGHTS: a fresh, unbound
#             TCP socket of that family whose connect() will send its SYN with that ISN
import socket
import struct

MAGIC = b"SKA1"
REQUEST = struct.Struct("!4sB3sI")
GREETING_OK = b"\x00"
GREETING_REFUSED = b"\x01"
STATUS_OK = 0
STATUS_MALFORMED = 1  # the agent closes the connection after it
STATUS_FAILED = 2  # the kernel refused the socket (for example no such address family)
STATUS_TEXT = {STATUS_MALFORMED: "malformed request", STATUS_FAILED: "the agent could not make the socket"}
_FAMILIES: dict[int, int] = {4: socket.AF_INET, 6: socket.AF_INET6}
_CODES: dict[int, int] = {v: k for k, v in _FAMILIES.items()}
_ZERO = bytes(3)


def encode_request(family: int, isn: int) -> bytes:
    """The request for a socket of `family` (AF_INET or AF_INET6) whose SYN carries `isn` (1..2^32-1)."""
    if family not in _CODES or not 0 < isn < 1 << 32:
        raise ValueError("family must be AF_INET or AF_INET6 and the ISN 1..2^32-1")
    return REQUEST.pack(MAGIC, _CODES[family], _ZERO, isn)


def decode_request(data: bytes) -> tuple[int, int] | None:
    """(family, isn) of a well-formed request; None for anything else (size, magic, family, ISN 0)."""
    if len(data) != REQUEST.size:
        return None
    magic, code, zero, isn = REQUEST.unpack(data)
    if magic != MAGIC or code not in _FAMILIES or zero != _ZERO or isn == 0:
        return None
    return _FAMILIES[code], isn
