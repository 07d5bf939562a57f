# Why: stealth-connect's relay carries every ProxyCommand session between ssh's pipes and the knocked
# socket. It must deliver bytes intact both ways (splice() from the socket into a pipe, read/write towards
# the server and for ends that are not pipes), pass stdin's end on as a half-close while the server talks,
# keep one direction moving while the other is stalled, end when the server closes even though stdin stays
# open, and tell a reset before any byte ("reset": the service is not there) from one after ("closed").
# Real pipes and TCP sockets on loopback, no mocks.
import contextlib
import fcntl
import hashlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from stealth_connect.relay import relay

JOIN_SECONDS = 10


class Relay:
    """relay(sock, in_fd, out_fd) in a thread; its result once it returned."""

    def __init__(self, sock: socket.socket, in_fd: int, out_fd: int) -> None:
        self.result: str | BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(sock, in_fd, out_fd), daemon=True)
        self.thread.start()

    def _run(self, sock: socket.socket, in_fd: int, out_fd: int) -> None:
        try:
            self.result = relay(sock, in_fd, out_fd)
        except BaseException as e:  # noqa: BLE001 -- handed to the test, which asserts on it
            self.result = e

    def wait(self) -> str | BaseException | None:
        self.thread.join(JOIN_SECONDS)
        assert not self.thread.is_alive(), "the relay did not return"
        return self.result


@contextlib.contextmanager
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the client's socket, the server's) of one TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    server.settimeout(JOIN_SECONDS)  # a test that would hang fails instead
    with client, server:
        yield client, server


def read_all(fd: int, n: int = -1) -> bytes:
    """`n` bytes from `fd` (or all until its end), failing the test after JOIN_SECONDS of silence."""
    chunks, got = [], 0
    while got != n:
        ready, _, _ = select.select([fd], [], [], JOIN_SECONDS)
        assert ready, f"nothing to read after {got} bytes"
        chunk = os.read(fd, 1 << 16 if n < 0 else min(1 << 16, n - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def reset(sock: socket.socket) -> None:
    """Close with an RST, as a host does for a port nothing listens on."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def in_background(fn: Callable[..., object], *args: object) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


@pytest.fixture
def pipes() -> Iterator[tuple[tuple[int, int], tuple[int, int]]]:
    """ssh's view: (stdin read end, the writer ssh keeps), (the reader ssh keeps, stdout write end)."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    yield (stdin_r, stdin_w), (stdout_r, stdout_w)
    for fd in (stdin_r, stdin_w, stdout_r, stdout_w):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_bulk_both_ways_at_once_through_pipes(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    (stdin_r, stdin_w), (stdout_r, stdout_w) = pipes
    up, down = os.urandom(24 << 20), os.urandom(40 << 20)
    got: dict[str, bytes] = {}
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)

        def feed_stdin() -> None:
            view = memoryview(up)
            while view:
                view = view[os.write(stdin_w, view[: 1 << 20]) :]
            os.close(stdin_w)

        def serve() -> None:  # the server's end of file only once stdin's came: it ends the relay
            sender = in_background(server.sendall, down)
            got["server"] = recv_all(server)
            sender.join(JOIN_SECONDS)
            server.shutdown(socket.SHUT_WR)

        threads = [in_background(feed_stdin), in_background(serve)]
        got["stdout"] = read_all(stdout_r, len(down))
        for t in threads:
            t.join(JOIN_SECONDS)
        assert r.wait() == "closed"
    assert len(got["server"]) == len(up)
    assert hashlib.sha256(got["server"]).digest() == hashlib.sha256(up).digest()
    assert got["stdout"] == down


def test_a_stalled_direction_does_not_stall_the_other(
        pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """The server reads nothing while ssh has much to send: what the server says still gets through."""
    (stdin_r, stdin_w), (stdout_r, stdout_w) = pipes
    stuffed = [0]

    def stuff() -> None:  # until every buffer on the way is full; EPIPE once the test closed the pipe
        with contextlib.suppress(OSError):
            while True:
                stuffed[0] += os.write(stdin_w, bytes(1 << 16))

    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        in_background(stuff)
        seen = -1
        while seen != stuffed[0]:  # no progress for 0.2 s: stuck
            seen = stuffed[0]
            time.sleep(0.2)
        server.sendall(b"are you there?")
        assert read_all(stdout_r, 14) == b"are you there?"
        assert stuffed[0] > 1 << 20
        server.close()
        assert r.wait() in ("closed", "reset")


def test_stdin_eof_is_a_half_close_and_the_server_goes_on(
        pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    (stdin_r, stdin_w), (stdout_r, stdout_w) = pipes
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        os.write(stdin_w, b"request")
        os.close(stdin_w)  # like `ssh host cmd < /dev/null`
        assert recv_all(server) == b"request"  # the half-close arrived
        server.sendall(b"answer after the client's EOF")
        server.close()
        assert r.wait() == "closed"
    os.close(stdout_w)
    assert read_all(stdout_r) == b"answer after the client's EOF"


def test_server_close_ends_the_relay_while_stdin_stays_open(
        pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    (stdin_r, _stdin_w), (stdout_r, stdout_w) = pipes
    threads_before = threading.active_count()
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        server.sendall(b"bye")
        server.close()
        assert r.wait() == "closed"
    os.close(stdout_w)
    assert read_all(stdout_r) == b"bye"
    assert threading.active_count() == threads_before  # the stdin side ended too


def test_reset_before_any_byte_is_reset(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    (stdin_r, _stdin_w), (_stdout_r, stdout_w) = pipes
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        reset(server)
        assert r.wait() == "reset"


@pytest.mark.parametrize("attempt", range(8))  # a race: either side may meet the reset first
def test_reset_before_any_byte_is_reset_while_stdin_sends(
        pipes: tuple[tuple[int, int], tuple[int, int]], attempt: int) -> None:
    """ssh speaks first; while it is still sending, the reset may reach the sending side first (which
    then takes the socket's error), and it is a reset all the same."""
    (stdin_r, stdin_w), (_stdout_r, stdout_w) = pipes
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        stop = threading.Event()

        def chatter() -> None:  # more than the socket buffers take: the sender waits on the socket
            os.set_blocking(stdin_w, False)
            while not stop.is_set():
                try:
                    os.write(stdin_w, bytes(1 << 16))
                except BlockingIOError:
                    time.sleep(0.001)

        t = in_background(chatter)
        server.recv(100)
        reset(server)
        try:
            assert r.wait() == "reset"
        finally:
            stop.set()
            t.join(JOIN_SECONDS)


def test_close_before_any_byte_is_closed(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """A server that closes (FIN) without a word is not a reset."""
    (stdin_r, _stdin_w), (_stdout_r, stdout_w) = pipes
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        server.close()
        assert r.wait() == "closed"


def test_reset_after_bytes_is_closed(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    (stdin_r, _stdin_w), (stdout_r, stdout_w) = pipes
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        server.sendall(b"SSH-2.0-x\r\n")
        assert os.read(stdout_r, 100) == b"SSH-2.0-x\r\n"
        reset(server)
        assert r.wait() == "closed"


def test_stdin_from_dev_null(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    _, (stdout_r, stdout_w) = pipes
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        with tcp_pair() as (client, server):
            r = Relay(client, fd, stdout_w)
            assert recv_all(server) == b""  # at once: nothing, then the half-close
            server.sendall(b"still here")
            server.close()
            assert r.wait() == "closed"
    finally:
        os.close(fd)
    os.close(stdout_w)
    assert read_all(stdout_r) == b"still here"


def test_stdin_from_a_file_and_stdout_to_a_file(tmp_path: Path) -> None:
    """Neither end a pipe: the read/write path, both ways."""
    up, down = os.urandom(3 << 20), os.urandom(5 << 20)
    (tmp_path / "in").write_bytes(up)
    fd_in = os.open(tmp_path / "in", os.O_RDONLY)
    fd_out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with tcp_pair() as (client, server):
            r = Relay(client, fd_in, fd_out)
            sender = in_background(server.sendall, down)
            assert recv_all(server) == up
            sender.join(JOIN_SECONDS)
            server.close()
            assert r.wait() == "closed"
    finally:
        os.close(fd_in)
        os.close(fd_out)
    assert (tmp_path / "out").read_bytes() == down


def test_non_blocking_pipes(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """Ends another process left non-blocking: a move says EAGAIN, the relay waits and goes on."""
    (stdin_r, stdin_w), (stdout_r, stdout_w) = pipes
    for fd in (stdin_r, stdout_w):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    up, down = os.urandom(4 << 20), os.urandom(6 << 20)
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)

        def slow_feed() -> None:
            for i in range(0, len(up), 1 << 20):
                time.sleep(0.01)  # stdin empty in between
                os.write(stdin_w, up[i : i + (1 << 20)])
            os.close(stdin_w)

        feeder = in_background(slow_feed)
        sender = in_background(server.sendall, down)
        time.sleep(0.05)  # stdout full before anyone reads it
        got = read_all(stdout_r, len(down))
        assert recv_all(server) == up
        for t in (feeder, sender):
            t.join(JOIN_SECONDS)
        server.shutdown(socket.SHUT_WR)
        assert r.wait() == "closed"
    assert got == down


def test_reader_gone_ends_the_relay(pipes: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """ssh exited (its end of our stdout closed): the relay ends rather than hanging."""
    (stdin_r, _stdin_w), (stdout_r, stdout_w) = pipes
    with tcp_pair() as (client, server):
        r = Relay(client, stdin_r, stdout_w)
        os.close(stdout_r)

        def flood() -> None:
            with contextlib.suppress(OSError):
                server.sendall(b"x" * (8 << 20))

        sender = in_background(flood)
        assert r.wait() == "closed"
    sender.join(JOIN_SECONDS)  # the client's close reset the connection under the server's send
