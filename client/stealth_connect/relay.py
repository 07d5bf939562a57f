# Why: ssh talks to a ProxyCommand over stdin/stdout. Either we relay bytes between those and the
# knocked socket until both directions end, or (ProxyUseFdpass) we hand ssh the socket itself over the
# Unix socket ssh gave us as stdout, and exit at once.
import os
import selectors
import socket

BUFFER_BYTES = 65536


def pass_fd(sock: socket.socket, channel_fd: int = 1) -> None:
    channel = socket.socket(fileno=os.dup(channel_fd))
    try:
        socket.send_fds(channel, [b"\0"], [sock.fileno()])
    finally:
        channel.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(sock: socket.socket, in_fd: int = 0, out_fd: int = 1) -> str:
    """Relay until the server closes. Returns "reset" if it reset the connection before sending a
    byte (the service behind the port is not there), else "closed"."""
    # select(), not epoll: epoll refuses files that cannot be polled, such as stdin from /dev/null
    sel = selectors.SelectSelector()
    sel.register(in_fd, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    open_dirs = 2
    received = False
    try:
        while open_dirs:
            for key, _ in sel.select():
                if key.data == "in":
                    data = os.read(in_fd, BUFFER_BYTES)
                    if data:
                        sock.sendall(data)
                    else:
                        sel.unregister(in_fd)
                        open_dirs -= 1
                        try:
                            sock.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                else:
                    try:
                        data = sock.recv(BUFFER_BYTES)
                    except ConnectionResetError:
                        return "closed" if received else "reset"
                    if data:
                        received = True
                        _write_all(out_fd, data)
                    else:
                        return "closed"  # the server closed: ssh sees EOF when we exit
    finally:
        sel.close()
    return "closed"
