# Why: the protected port has no socket, so the kernel itself answers every unauthenticated packet as
# it does for an unused port. A SYN the daemon accepted carries its mark, and the firewall's TPROXY rule
# hands it to a transparent listener on loopback (accept_port) that the daemon opens at start. This
# module opens those listeners and runs the acceptor: a small process of its own (started with exec, so
# forking a relay never copies the daemon's token table) that accepts each connection, checks that it
# arrived for a protected port, and forks one relay process per connection (relay.py). The acceptor
# exits when the daemon is gone; relays live on until their session ends.
import argparse
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence

from stealth.backend import LOOPBACK, Backend, parse_assignment
from stealth.errors import StealthError
from stealth.relay import connect_backend, relay, reset

log = logging.getLogger("stealth.acceptor")
ACCEPT_BACKLOG = 1024
PARENT_CHECK_SECONDS = 1.0
_IP_TRANSPARENT = 19  # linux/in.h
_IPV6_TRANSPARENT = 75  # linux/in6.h


def open_listeners(port: int, families: Sequence[int]) -> list[socket.socket]:
    """Transparent listeners on loopback:port, one per family. Raises StealthError with one line."""
    out: list[socket.socket] = []
    try:
        for family in families:
            sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
            out.append(sock)
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_TRANSPARENT, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, _IP_TRANSPARENT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((LOOPBACK[family], port))
            sock.listen(ACCEPT_BACKLOG)
    except OSError as e:
        for sock in out:
            sock.close()
        raise StealthError(f"cannot listen on loopback port {port} (accept_port in server.toml) for accepted "
                           f"knocks: {e.strerror or e}") from None
    return out


def spawn(listeners: Sequence[socket.socket], backends: dict[int, Backend]) -> "subprocess.Popen[bytes]":
    """Start the acceptor process with the listeners passed down by fd."""
    fds = [s.fileno() for s in listeners]
    argv = [sys.executable, "-m", "stealth.acceptor", "--parent", str(os.getpid())]
    argv += [a for fd in fds for a in ("--fd", str(fd))]
    argv += [a for port, b in sorted(backends.items()) for a in ("--backend", f"{port}={b}")]
    # stdout: nothing to say there, and whoever reads the daemon's stdout must not wait for relays
    return subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def serve(listeners: Sequence[socket.socket], backends: dict[int, Backend], parent: int) -> None:
    """Accept until the daemon (`parent`) is gone; one relay process per connection."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # relays are reaped by the kernel
    selector = selectors.DefaultSelector()
    for sock in listeners:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    while os.getppid() == parent:
        for key, _ in selector.select(PARENT_CHECK_SECONDS):
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            _hand_off(conn, peer, backends, listeners)


def _hand_off(conn: socket.socket, peer: object, backends: dict[int, Backend],
              listeners: Sequence[socket.socket]) -> None:
    local_port = conn.getsockname()[1]
    backend = backends.get(local_port)
    if backend is None:  # a local process connected to accept_port itself: not a knock
        reset(conn)
        return
    pid = os.fork()
    if pid:
        conn.close()
        return
    code = 0
    try:
        for sock in listeners:
            sock.close()
        os.setsid()  # a signal to the daemon's process group (^C, kill of the group) spares sessions
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            upstream = connect_backend(backend)
        except OSError as e:
            log.warning("backend %s for port %d unreachable (%s); resetting %s", backend, local_port,
                        e.strerror or e, peer)
            reset(conn)
            code = 1
        else:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            relay(conn, upstream)
    finally:
        os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stealth.acceptor")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--fd", type=int, action="append", default=[])
    parser.add_argument("--backend", action="append", default=[])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us with SIGTERM
    backends = dict(parse_assignment(b) for b in args.backend)
    listeners = [socket.socket(fileno=fd) for fd in args.fd]
    serve(listeners, backends, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
