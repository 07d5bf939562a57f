# Why: ssh talks to a ProxyCommand over stdin/stdout, which OpenSSH makes two pipe() pairs, so every byte
# of a session (scp, rsync, forwards) crosses this process. Towards ssh, splice() moves the socket's pages
# into the stdout pipe inside the kernel (no copy, no Python work per byte, up to a grown pipe's worth per
# call). Towards the server, plain read/write: pipe pages spliced into TCP go out one 4 KiB fragment each,
# which every hop after us then handles one by one; the copy builds large fragments and measured faster
# (benchmarks/client.py). One thread waits in poll() for whichever end each direction needs, and the
# socket is non-blocking: a splice() that waits for the socket holds the pipe's lock meanwhile, and ssh's
# read of that pipe would wait for the server's next byte. Ends that are not pipes (stdin from /dev/null,
# a file, a tty, a socket) take the read/write path. With ProxyUseFdpass we instead hand ssh the socket
# itself over the Unix socket it gave us as stdout.
import contextlib
import fcntl
import os
import select
import socket
import stat

MOVE_BYTES = 1 << 20  # the most one splice() moves (a pipe holds at most its size)
PIPE_BYTES = 1 << 20  # what each pipe is grown to: fs.pipe-max-size's default, allowed to every user
COPY_BYTES = 1 << 18  # read/write path: the most one read() takes
TCP_CLOSE_STATE = 7  # tcpi_state of a connection that is gone (reset), where a FIN leaves CLOSE_WAIT
NOT_READY = -1


def pass_fd(sock: socket.socket, channel_fd: int = 1) -> None:
    """Hand `sock` to ssh (ProxyUseFdpass) over the Unix socket `channel_fd`."""
    channel = socket.socket(fileno=os.dup(channel_fd))
    try:
        socket.send_fds(channel, [b"\0"], [sock.fileno()])
    finally:
        channel.close()


def _pipe(fd: int) -> bool:
    """True for a pipe or FIFO (grown to PIPE_BYTES where the user's pipe quota allows)."""
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return False
    with contextlib.suppress(OSError):  # over the quota, or a lowered limit: the pipe keeps its size
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_BYTES:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return True


class _Flow:
    """One direction, bytes from `src` to `dst` (with splice() or read/write); `want` is the end (fd,
    poll events) it waits for."""

    def __init__(self, src: int, dst: int, spliced: bool) -> None:
        self.src, self.dst, self.spliced = src, dst, spliced
        self.buf = bytearray(0 if self.spliced else COPY_BYTES)
        self.pending = memoryview(self.buf)[:0]  # read/write path: read, not yet written
        self.want = (src, select.POLLIN)
        self.moved = 0

    def step(self) -> int:
        """Move what can move now: the bytes moved, 0 at `src`'s end, NOT_READY if an end was not."""
        try:
            n = self._splice() if self.spliced else self._copy()
        except BlockingIOError:
            return NOT_READY
        self.moved += n
        return n

    def _splice(self) -> int:
        try:
            n = os.splice(self.src, self.dst, MOVE_BYTES)
        except BlockingIOError:  # one end was not ready: wait for the other one than last time
            self.want = (self.dst, select.POLLOUT) if self.want[0] == self.src else (self.src, select.POLLIN)
            raise
        self.want = (self.src, select.POLLIN)
        return n

    def _copy(self) -> int:
        if not self.pending:
            self.want = (self.src, select.POLLIN)
            self.pending = memoryview(self.buf)[: os.readv(self.src, [self.buf])]
            if not self.pending:
                return 0
        self.want = (self.dst, select.POLLOUT)
        n = os.write(self.dst, self.pending)
        self.pending = self.pending[n:]
        if not self.pending:
            self.want = (self.src, select.POLLIN)
        return n


def _ready(flows: list[_Flow]) -> list[_Flow]:
    """Wait until one of `flows` may move: those that may."""
    events: dict[int, int] = {}
    for f in flows:
        events[f.want[0]] = events.get(f.want[0], 0) | f.want[1]
    poller = select.poll()
    for fd, ev in events.items():
        poller.register(fd, ev)
    got = dict(poller.poll())
    done = select.POLLHUP | select.POLLERR | select.POLLNVAL
    return [f for f in flows if got.get(f.want[0], 0) & (f.want[1] | done)]


def relay(sock: socket.socket, in_fd: int = 0, out_fd: int = 1) -> str:
    """Relay until the server closes. Returns "reset" if it reset the connection before sending a
    byte (the service behind the port is not there), else "closed". The end of `in_fd` is passed on
    as a half-close; a reader of `out_fd` that went away ends the relay like the server's close.
    Leaves `sock` non-blocking."""
    sock.setblocking(False)
    with contextlib.suppress(OSError):  # not TCP
        # ssh sets this on a socket it holds (--fdpass) for interactive sessions; here it cannot, and
        # each of our writes is one or more of its packets, which Nagle would hold back a round trip
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _pipe(in_fd)  # grown all the same: ssh may write more before it waits for us
    up = _Flow(in_fd, sock.fileno(), spliced=False)
    down = _Flow(sock.fileno(), out_fd, spliced=_pipe(out_fd))
    flows, reset = [up, down], False
    while True:
        for flow in _ready(flows):
            try:
                n = flow.step()
            except ConnectionResetError:  # reported once, to whichever direction meets it first
                reset, n = True, 0
            except BrokenPipeError:  # the socket is shut (up), or ssh has gone (down)
                n = 0
            if n == 0 and flow is down:
                # a splice() that moved bytes before it met a reset returns the count, not the error:
                # a connection already gone (where a FIN leaves CLOSE_WAIT) was reset too
                reset = reset or _tcp_state(sock) == TCP_CLOSE_STATE
                return "reset" if reset and not down.moved else "closed"
            if n == 0:
                flows.remove(up)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)


def _tcp_state(sock: socket.socket) -> int:
    try:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return -1  # not TCP
