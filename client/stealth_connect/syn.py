# Why: the only code that chooses a SYN's sequence number. It asks the kernel for an ordinary connect()
# whose ISN (and source port) we pick, so the knock is the client OS's own SYN: its options, window, TTL,
# IP ID, timestamps and retransmission timing are the kernel's. Mechanism (checked on Linux 6.18):
# TCP_REPAIR on, TCP_REPAIR_QUEUE=TCP_SEND_QUEUE, TCP_QUEUE_SEQ=isn, TCP_REPAIR off without window
# probe, bind(source port), connect(). Needs CAP_NET_ADMIN.
import errno
import socket
import struct

from stealth.errors import ClientError

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_SEND_QUEUE = 2
TCP_REPAIR_OFF_NO_WP = -1

PRIVILEGE_HINT = (
    "choosing the SYN's sequence number needs CAP_NET_ADMIN (TCP_REPAIR): run stealth-connect as root, "
    "or give the capability to a dedicated copy of the interpreter: "
    "sudo setcap cap_net_admin+ep /opt/stealth/python3 (see README, 'Privileges')"
)


class PortBusy(Exception):
    """The token's source port is taken locally; the caller moves on to the next counter."""


def _proc_addr(family: int, addr: str) -> str:
    """An address as /proc/net/tcp{,6} prints it: 32-bit words in host (little-endian) order."""
    raw = socket.inet_pton(family, addr)
    return "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4))


def tuple_in_use(family: int, dst: str, dport: int, sport: int) -> bool:
    """Whether a socket of this host holds the 4-tuple (any local address, sport) -> (dst, dport), in any
    state: another run's knock still waiting for its answer, a connection, or TIME_WAIT (where connect()
    may reuse the tuple with the kernel's own sequence number instead of ours, so the knock would carry
    no token). The caller treats the port as busy."""
    remote = f"{_proc_addr(family, dst)}:{dport:04X}"
    local_port = f":{sport:04X}"
    try:
        with open("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[2] == remote and fields[1].endswith(local_port):
                    return True
    except OSError:
        return False
    return False


def knock_socket(family: int, isn: int, sport: int | None) -> socket.socket:
    """A TCP socket whose connect() will send the kernel's own SYN with this ISN and source port."""
    if not 0 < isn < 1 << 32:
        raise ValueError("ISN must be 1..2^32-1")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        except PermissionError:
            raise ClientError(PRIVILEGE_HINT) from None
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("=I", isn))
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, struct.pack("=i", TCP_REPAIR_OFF_NO_WP))
        if sport is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                    raise PortBusy(sport) from None
                raise
    except BaseException:
        sock.close()
        raise
    return sock
