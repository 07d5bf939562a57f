# Why: lets users without CAP_NET_ADMIN knock. Choosing a SYN's ISN needs TCP_REPAIR, a privilege that
# also reconfigures the network; a file capability on an interpreter would hand all of it to whoever
# runs that interpreter, and security updates never patch the copy. The agent keeps the privilege in
# one small root process that does one thing: on request, it makes a fresh TCP socket whose SYN will
# carry a given ISN (repair mode on, send-queue sequence set, repair mode off) and passes it over the
# Unix socket (SCM_RIGHTS). The user's process binds and connects it itself, unprivileged.
#
# What it sees: an address family and 32 bits (agent_proto.py); never a key, profile, counter, port or
# destination. Who may ask: root, and members of one group (the peer's credentials from the kernel at
# connect time, SO_PEERCRED and SO_PEERGROUPS; the socket file is also 0660 root:group). What a member
# gets: an ordinary unconnected TCP socket. Repair mode is off, and turning it on again needs
# CAP_NET_ADMIN in the caller, so the socket carries no privilege. Malformed, oversized or fd-carrying
# requests are refused and the connection closed; idle and surplus connections are closed, so no
# client can hold the agent.
import contextlib
import errno
import os
import selectors
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from stealth.constants import (
    AGENT_IDLE_SECONDS,
    AGENT_MAX_CONNECTIONS,
    AGENT_MAX_REQUESTS,
    AGENT_SOCKET_MODE,
)
from stealth.errors import StealthError
from stealth_connect.agent_proto import (
    GREETING_OK,
    GREETING_REFUSED,
    STATUS_FAILED,
    STATUS_MALFORMED,
    STATUS_OK,
    decode_request,
)
from stealth_connect.syn import repaired_socket

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+
PEERGROUPS_BYTES = 1024  # the most CPython's getsockopt returns: 256 groups
READ_BYTES = 256  # larger than any request, so an oversized one shows as too long, not truncated
TICK_SECONDS = 0.5
SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class Peer:
    """A connected process's credentials as the kernel recorded them: pid, uid, primary gid, supplementary
    groups."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]


def peer_of(conn: socket.socket) -> Peer:
    """The connecting process's credentials, as the kernel recorded them when it connected."""
    pid, uid, gid = struct.unpack("=3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEERGROUPS_BYTES)
        groups = struct.unpack(f"={len(raw) // 4}I", raw[: len(raw) // 4 * 4])
    except OSError as e:
        if e.errno != errno.ERANGE:
            raise
        groups = _proc_groups(pid)  # more than 256 groups: read them from the live process instead
    return Peer(pid, uid, gid, tuple(groups))


def _proc_groups(pid: int) -> tuple[int, ...]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return ()


def permitted(peer: Peer, gid: int) -> bool:
    """Root, or a process whose primary or supplementary group is the agent's group."""
    return peer.uid == 0 or peer.gid == gid or gid in peer.groups


@dataclass
class _Conn:
    sock: socket.socket
    last: float
    requests: int = 0


class Agent:
    """The agent's event loop over one listening seqpacket socket. `log` gets one line per refusal."""

    def __init__(self, listener: socket.socket, gid: int, log: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listener, self.gid, self.log, self.clock = listener, gid, log, clock
        self.conns: dict[int, _Conn] = {}
        self.sel = selectors.DefaultSelector()
        listener.setblocking(False)
        self.sel.register(listener, selectors.EVENT_READ)
        self.served = 0

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Serve until `stop()` returns True (asked every TICK_SECONDS): each request gets a status byte and,
        when it succeeds, one fresh socket whose SYN carries the ISN asked for. Idle connections are
        closed."""
        while not stop():
            for key, _ in self.sel.select(TICK_SECONDS):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._serve(self.conns[key.fd])
            self._expire()

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        try:
            peer = peer_of(sock)
        except OSError:
            sock.close()
            return
        if not permitted(peer, self.gid) or len(self.conns) >= AGENT_MAX_CONNECTIONS:
            reason = "busy" if permitted(peer, self.gid) else "not in the agent's group"
            self.log(f"refused pid {peer.pid} uid {peer.uid}: {reason}")
            with contextlib.suppress(OSError):
                sock.send(GREETING_REFUSED)
            sock.close()
            return
        try:
            sock.send(GREETING_OK)
        except OSError:
            sock.close()
            return
        self.conns[sock.fileno()] = _Conn(sock, self.clock())
        self.sel.register(sock, selectors.EVENT_READ)

    def _serve(self, conn: _Conn) -> None:
        try:
            data, ancdata, flags, _ = conn.sock.recvmsg(READ_BYTES, socket.CMSG_SPACE(4 * 16))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        passed = _close_passed_fds(ancdata)
        if not data:
            self._close(conn)
            return
        request = None if passed or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else decode_request(data)
        if request is None:
            self.log(f"malformed request ({len(data)} bytes{', with fds' if passed else ''}): closed")
            self._reply(conn, STATUS_MALFORMED)
            self._close(conn)
            return
        conn.last, conn.requests = self.clock(), conn.requests + 1
        try:
            made = repaired_socket(*request)
        except OSError:
            self._reply(conn, STATUS_FAILED)
        else:
            self._reply(conn, STATUS_OK, made)
            made.close()
            self.served += 1
        if conn.requests >= AGENT_MAX_REQUESTS:
            self._close(conn)

    def _reply(self, conn: _Conn, status: int, made: socket.socket | None = None) -> None:
        fds = [made.fileno()] if made is not None else []
        try:
            socket.send_fds(conn.sock, [bytes([status])], fds)
        except OSError:
            self._close(conn)

    def _expire(self) -> None:
        now = self.clock()
        for conn in [c for c in self.conns.values() if now - c.last > AGENT_IDLE_SECONDS]:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is not None:
            self.sel.unregister(conn.sock)
        conn.sock.close()


def _close_passed_fds(ancdata: list[tuple[int, int, bytes]]) -> bool:
    """Close any fds a client sent along (the agent takes none); True if there were any."""
    passed = False
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for fd in struct.unpack(f"={len(payload) // 4}i", payload[: len(payload) // 4 * 4]):
                os.close(fd)
            passed = True
    return passed


def inherited_listener() -> socket.socket | None:
    """The socket systemd passed (socket activation: LISTEN_PID is us, LISTEN_FDS=1), else None."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        raise StealthError("the socket systemd passed is not a Unix seqpacket socket "
                           "(ListenSequentialPacket= in stealth-agent.socket)")
    return sock


def bind_listener(path: str, gid: int) -> socket.socket:
    """A fresh listening socket at `path`, 0660 root:gid. Refuses if another agent answers there."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    if os.path.lexists(path):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # a stale socket of a dead agent
            else:
                raise StealthError(f"another agent already listens on {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        old = os.umask(0o177)  # never reachable by others between bind and chmod
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chown(path, 0, gid)
        os.chmod(path, AGENT_SOCKET_MODE)
        sock.listen(AGENT_MAX_CONNECTIONS)
    except BaseException:
        sock.close()
        raise
    return sock


def log_stderr(line: str) -> None:
    """The agent's log: one line on stderr, flushed at once (the journal, under systemd)."""
    print(f"stealth agent: {line}", file=sys.stderr, flush=True)
