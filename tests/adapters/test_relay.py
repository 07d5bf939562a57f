# Why: the relay carries every session; it must move bytes both ways without loss or reordering, pass a
# half-close on as a half-close, and not deadlock when both directions are busy at once.
import os
import socket
import threading

from stealth.relay import relay


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    return a, b


def test_bulk_both_ways_at_once_with_half_close() -> None:
    client_end, relay_client = pair()
    relay_backend, backend_end = pair()
    worker = threading.Thread(target=relay, args=(relay_client, relay_backend))
    worker.start()
    up, down = os.urandom(3 << 20), os.urandom(5 << 20)
    got: dict[str, bytes] = {}

    def pump(sock: socket.socket, data: bytes, key: str) -> None:
        def send() -> None:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)

        sender = threading.Thread(target=send)
        sender.start()
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        sender.join()
        got[key] = b"".join(chunks)

    threads = [threading.Thread(target=pump, args=(client_end, up, "at client")),
               threading.Thread(target=pump, args=(backend_end, down, "at backend"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert got["at backend"] == up and got["at client"] == down


def test_half_close_keeps_the_other_direction_open() -> None:
    client_end, relay_client = pair()
    relay_backend, backend_end = pair()
    worker = threading.Thread(target=relay, args=(relay_client, relay_backend))
    worker.start()
    client_end.sendall(b"request")
    client_end.shutdown(socket.SHUT_WR)  # like `ssh host cmd < /dev/null`
    assert backend_end.recv(100) == b"request"
    assert backend_end.recv(100) == b""  # the half-close arrived
    backend_end.sendall(b"answer after the client's EOF")
    backend_end.close()
    data = b""
    while chunk := client_end.recv(100):
        data += chunk
    assert data == b"answer after the client's EOF"
    worker.join(timeout=10)
    assert not worker.is_alive()
