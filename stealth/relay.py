# Why: joins one accepted connection to its backend (the real service on loopback or a Unix socket) in
# a process of its own, so neither a crash nor a `kill -9` of the daemon cuts a session. Bytes move
# kernel to kernel with splice() through a pipe per direction; Python only wakes once per chunk of up
# to RELAY_PIPE_BYTES. Both sockets are non-blocking and each direction waits only for its own peer, so
# two busy directions never deadlock each other. A half-close is passed on as a half-close, a reset as a
# reset.
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
from typing import Final

from stealth.backend import Backend

RELAY_PIPE_BYTES: Final = 1 << 20
RELAY_CONNECT_SECONDS: Final = 5.0
_F_SETPIPE_SZ: Final = 1031  # fcntl.F_SETPIPE_SZ, missing from older Pythons' fcntl
_SPLICE_FLAGS: Final = 0x1 | 0x2  # SPLICE_F_MOVE | SPLICE_F_NONBLOCK


def connect_backend(backend: Backend) -> socket.socket:
    """A connected socket to the backend (raises OSError)."""
    if backend.path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = backend.path
    else:
        sock = socket.socket(socket.AF_INET6 if backend.family == "ipv6" else socket.AF_INET)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = (backend.host, backend.port)
    sock.settimeout(RELAY_CONNECT_SECONDS)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock


def reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), so the peer learns the other side failed, not that it finished."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Direction:
    """Bytes from `src` to `dst` through one pipe: `pending` bytes wait in the pipe."""

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src, self.dst = src, dst
        self.rpipe, self.wpipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.wpipe, _F_SETPIPE_SZ, RELAY_PIPE_BYTES)
        self.pending = 0
        self.eof = False
        self.done = False

    def want(self) -> tuple[socket.socket, int] | None:
        if self.done:
            return None
        if self.pending:
            return self.dst, select.POLLOUT
        return (self.src, select.POLLIN) if not self.eof else None

    def pump_in(self) -> None:
        n = os.splice(self.src.fileno(), self.wpipe, RELAY_PIPE_BYTES, flags=_SPLICE_FLAGS)
        if n == 0:
            self.eof = True
            self._finish_if_drained()
        self.pending += n

    def pump_out(self) -> None:
        self.pending -= os.splice(self.rpipe, self.dst.fileno(), self.pending, flags=_SPLICE_FLAGS)
        self._finish_if_drained()

    def _finish_if_drained(self) -> None:
        if self.eof and not self.pending:
            self.done = True
            with contextlib.suppress(OSError):
                self.dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        os.close(self.rpipe)
        os.close(self.wpipe)


def relay(client: socket.socket, backend: socket.socket) -> None:
    """Move bytes both ways until both directions have finished, or either side fails (then both are
    reset). Returns when the session is over; closes both sockets."""
    for s in (client, backend):
        s.setblocking(False)
    directions = [_Direction(client, backend), _Direction(backend, client)]
    poller = select.poll()
    failed = False
    try:
        while not all(d.done for d in directions):
            events: dict[int, int] = {}
            for d in directions:
                want = d.want()
                if want is not None:
                    events[want[0].fileno()] = events.get(want[0].fileno(), 0) | want[1]
            for fd in (client.fileno(), backend.fileno()):
                poller.register(fd, events.get(fd, 0))
            ready = dict(poller.poll())
            for d in directions:
                _step(d, ready)
    except OSError as e:
        failed = e.errno not in (errno.EAGAIN,)
    finally:
        for d in directions:
            d.close()
        for s in (client, backend):
            if failed:
                reset(s)
            else:
                s.close()


def _step(d: _Direction, ready: dict[int, int]) -> None:
    want = d.want()
    if want is None:
        return
    sock, event = want
    revents = ready.get(sock.fileno(), 0)
    if not revents:
        return
    if revents & select.POLLERR:
        raise OSError(errno.ECONNRESET, "connection reset")
    try:
        if event == select.POLLIN:
            d.pump_in()
        else:
            d.pump_out()
    except BlockingIOError:
        pass
