# Why: the only code that chooses a SYN's sequence number. It asks the kernel for an ordinary connect()
# whose ISN (and source port) we pick, so the knock is the client OS's own SYN: its options, window, TTL,
# IP ID, timestamps and retransmission timing are the kernel's. Mechanism (checked on Linux 6.18):
# TCP_REPAIR on, TCP_REPAIR_QUEUE=TCP_SEND_QUEUE, TCP_QUEUE_SEQ=isn, TCP_REPAIR off without window
# probe, then bind(source port), connect(). The first part needs CAP_NET_ADMIN, so it is done either
# here (root) or by the client agent, which passes the prepared socket over (synsource.py); binding and
# connecting need no privilege, so they are always done here.
import errno
import socket
import struct

TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_SEND_QUEUE = 2
TCP_REPAIR_OFF_NO_WP = -1


class PortBusy(Exception):
    """The token's source port is taken locally; the caller moves on to the next counter."""


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NO_COOKIE = 0xFFFFFFFF


def _diag_request(family: int, local: bytes, sport: int, remote: bytes, dport: int) -> bytes:
    """nlmsghdr + inet_diag_req_v2 asking for the one socket with this exact 4-tuple (no dump)."""
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    body += struct.pack("!HH", sport, dport) + local.ljust(16, b"\0") + remote.ljust(16, b"\0")
    body += struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    return struct.pack("=IHHII", 16 + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + body


def _local_address(family: int, dst: str, dport: int) -> str:
    """The source address this host would use towards dst (a UDP connect sends nothing)."""
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((dst, dport))
        local: str = probe.getsockname()[0]
        return local


def tuple_in_use(family: int, dst: str, dport: int, sport: int) -> bool:
    """Whether a socket of this host holds the 4-tuple (our source address, sport) -> (dst, dport), in
    any state: another run's knock still waiting for its answer, a connection, or TIME_WAIT (where
    connect() may reuse the tuple with the kernel's own sequence number instead of ours, so the knock
    would carry no token). One exact sock_diag lookup (reading /proc/net/tcp walks the whole
    connection table: milliseconds on a large host). The caller treats the port as busy."""
    try:
        local = socket.inet_pton(family, _local_address(family, dst, dport))
        request = _diag_request(family, local, sport, socket.inet_pton(family, dst), dport)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(request)
            reply = nl.recv(8192)
    except OSError:
        return False  # cannot tell: the connect() itself still reports a tuple in use
    if len(reply) < 16:
        return False
    msg_type: int = struct.unpack_from("=H", reply, 4)[0]
    if msg_type == _NLMSG_ERROR:
        error: int = struct.unpack_from("=i", reply, 16)[0]
        return error == 0  # -ENOENT: no such socket
    return msg_type == _SOCK_DIAG_BY_FAMILY


def repaired_socket(family: int, isn: int) -> socket.socket:
    """A fresh, unbound TCP socket whose connect() will send its SYN with `isn`. PermissionError without
    CAP_NET_ADMIN. Repair mode is off again when it returns: the socket is an ordinary one."""
    if not 0 < isn < 1 << 32:
        raise ValueError("ISN must be 1..2^32-1")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        sock.setsockopt(socket.IPPROTO_TCP, TCP_QUEUE_SEQ, struct.pack("=I", isn))
        sock.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, struct.pack("=i", TCP_REPAIR_OFF_NO_WP))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_source_port(sock: socket.socket, family: int, sport: int | None) -> socket.socket:
    """Bind the knock's source port (PortBusy if it is taken here); closes the socket on any error."""
    if sport is None:
        return sock
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
    except OSError as e:
        sock.close()
        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            raise PortBusy(sport) from None
        raise
    return sock


def knock_socket(family: int, isn: int, sport: int | None) -> socket.socket:
    """A socket whose connect() sends the kernel's own SYN with this ISN and source port, made by this
    process (so it needs CAP_NET_ADMIN: PermissionError without it). Tests and labs use it directly."""
    return bind_source_port(repaired_socket(family, isn), family, sport)
