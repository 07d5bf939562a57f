# Why: the protected port has no socket, so the kernel itself answers every unauthenticated packet as
# it does for an unused port. A SYN the daemon accepted carries its mark, and the firewall's TPROXY rule
# hands it to a transparent listener on loopback (accept_port) that the daemon opens at start. This
# module opens those listeners and runs the acceptor: a small process of its own (started with exec, so
# forking a relay never copies the daemon's token table) that accepts each connection, checks that it
# arrived for a protected port, and forks one relay process per connection (relay.py). On a sealed port
# the relay first reads the client's proof of the session key (core/seal.py; the key comes from the
# daemon, sessions.py) within the deadline and answers with the server's: a connection that cannot
# prove it gets an RST and not one byte of the service. The acceptor exits when the daemon is gone;
# relays live on until their session ends.
import argparse
import hmac
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from stealth import logfmt
from stealth.backend import LOOPBACK, Backend, parse_assignment
from stealth.constants import PROOF_BYTES
from stealth.core.seal import client_proof, server_proof
from stealth.core.secret import Secret
from stealth.errors import StealthError
from stealth.relay import connect_backend, relay, reset
from stealth.sessions import KeyStore

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


@dataclass(frozen=True)
class Plan:
    """Where each protected port's connections go, and which ports are sealed."""

    backends: dict[int, Backend]
    sealed: frozenset[int] = frozenset()
    deadline_seconds: float = 5.0


def spawn(listeners: Sequence[socket.socket], plan: Plan, keys: socket.socket) -> "subprocess.Popen[bytes]":
    """Start the acceptor process with the listeners and the key channel passed down by fd."""
    fds = [s.fileno() for s in listeners]
    argv = [sys.executable, "-m", "stealth.acceptor", "--parent", str(os.getpid()), "--keys",
            str(keys.fileno()), "--deadline", str(plan.deadline_seconds)]
    argv += [a for fd in fds for a in ("--fd", str(fd))]
    argv += [a for port, b in sorted(plan.backends.items()) for a in ("--backend", f"{port}={b}")]
    argv += [a for port in sorted(plan.sealed) for a in ("--sealed", str(port))]
    # stdout: nothing to say there, and whoever reads the daemon's stdout must not wait for relays
    return subprocess.Popen(argv, pass_fds=[*fds, keys.fileno()], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)


def serve(listeners: Sequence[socket.socket], plan: Plan, keys: KeyStore, parent: int) -> None:
    """Accept until the daemon (`parent`) is gone; one relay process per connection."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # relays are reaped by the kernel
    selector = selectors.PollSelector()  # poll keeps no fd of its own for the relays to inherit
    for sock in listeners:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    if keys.channel is not None:
        selector.register(keys.channel, selectors.EVENT_READ)  # drained as keys arrive, not in bursts
    while os.getppid() == parent:
        for key, _ in selector.select(PARENT_CHECK_SECONDS):
            listener = key.fileobj
            if listener is keys.channel:
                keys.drain()
                continue
            assert isinstance(listener, socket.socket)
            try:
                conn, peer = listener.accept()
            except OSError:
                continue
            _hand_off(conn, peer, plan, keys, listeners)
        keys.drain()


def _hand_off(conn: socket.socket, peer: tuple[str, int], plan: Plan, keys: KeyStore,
              listeners: Sequence[socket.socket]) -> None:
    local_port = conn.getsockname()[1]
    backend = plan.backends.get(local_port)
    if backend is None:  # a local process connected to accept_port itself: not a knock
        reset(conn)
        return
    session_key = None
    if local_port in plan.sealed:
        src = socket.inet_pton(conn.family, peer[0])
        session_key = keys.take((src, peer[1], local_port))
    pid = os.fork()
    if pid:
        conn.close()
        return
    code = 1
    try:
        for sock in listeners:
            sock.close()
        keys.close()  # this relay keeps no other connection's key, and no way to read the next ones
        os.setsid()  # a signal to the daemon's process group (^C, kill of the group) spares sessions
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if local_port in plan.sealed and not _unseal(conn, session_key, plan.deadline_seconds, peer):
            return
        try:
            upstream = connect_backend(backend)
        except OSError as e:
            log.warning("backend %s for port %d unreachable (%s); resetting %s", backend, local_port,
                        e.strerror or e, peer[0])
            reset(conn)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        relay(conn, upstream)
        code = 0
    finally:
        os._exit(code)


def _unseal(conn: socket.socket, session_key: Secret | None, deadline_seconds: float,
            peer: tuple[str, int]) -> bool:
    """Read the client's proof within the deadline and answer with the server's. Any failure: an RST,
    and not one byte was sent (one log line: each try costs the sender a valid token)."""
    got = b""
    end = time.monotonic() + deadline_seconds
    try:
        while len(got) < PROOF_BYTES and (left := end - time.monotonic()) > 0:
            conn.settimeout(left)
            chunk = conn.recv(PROOF_BYTES - len(got))
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    if session_key is not None and hmac.compare_digest(got, client_proof(session_key)):
        conn.settimeout(None)
        conn.sendall(server_proof(session_key))
        return True
    why = ("no session key for it" if session_key is None else "no proof within the deadline"
           if len(got) < PROOF_BYTES else "a wrong proof")
    log.warning("sealed port %d: %s from [%s]:%d; reset", conn.getsockname()[1], why, peer[0], peer[1])
    reset(conn)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m stealth.acceptor`, which spawn() starts: adopt the listeners and the key
    channel passed down by fd, and serve until the daemon is gone. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m stealth.acceptor")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--fd", type=int, action="append", default=[])
    parser.add_argument("--backend", action="append", default=[])
    parser.add_argument("--sealed", type=int, action="append", default=[])
    parser.add_argument("--keys", type=int, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    args = parser.parse_args(argv)
    logfmt.configure(logging.INFO, "%(name)s: %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon stops us with SIGTERM
    plan = Plan(dict(parse_assignment(b) for b in args.backend), frozenset(args.sealed), args.deadline)
    listeners = [socket.socket(fileno=fd) for fd in args.fd]
    keys = socket.socket(fileno=args.keys)
    keys.setblocking(False)
    serve(listeners, plan, KeyStore(keys), args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
