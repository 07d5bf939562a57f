# Why: a sealed port's relay must know the session key of the connection it serves, and only the daemon
# derives it (on accept). For each accepted knock on a sealed port the daemon sends the key to the
# acceptor as one datagram on a Unix socketpair, before the knock's verdict: by the time the kernel
# completes that connection's handshake and the acceptor accepts it, the datagram waits in the
# acceptor's socket. Keys are kept by the connection's (source address, source port, destination port),
# for as long as a handshake can take, and handed to exactly one relay. Nothing here is logged; the
# keys never leave the machine.
import socket
import struct
import time
from typing import Final

from stealth.core.secret import Secret

KEY_TTL_SECONDS: Final = 60.0  # a handshake's lifetime: conntrack's SYN_RECV timeout
CHANNEL_BYTES: Final = 1 << 20  # kernel buffer of the channel: a burst of keys waits there, not lost
MAX_KEYS: Final = 1 << 16  # a bound on memory (about 15 MB) under a flood of valid knocks: oldest first
_RECORD = struct.Struct("!B16sHH32s")  # address length, address (padded), source port, dest port, key
Flow = tuple[bytes, int, int]  # source address (4 or 16 bytes), source port, destination port


def pack_key(src: bytes, sport: int, dport: int, key: Secret) -> bytes:
    """One channel record: the flow (source address, source port, destination port) and its session key."""
    return _RECORD.pack(len(src), src, sport, dport, key.value)


def unpack_key(record: bytes) -> tuple[Flow, Secret] | None:
    """(flow, key) of one channel record; None for a record of the wrong size or address length."""
    if len(record) != _RECORD.size:
        return None
    n, src, sport, dport, key = _RECORD.unpack(record)
    if n not in (4, 16):
        return None
    return (src[:n], sport, dport), Secret(key)


def key_channel() -> tuple[socket.socket, socket.socket]:
    """(daemon's end, acceptor's end). Both non-blocking: a full channel drops a key (its connection is
    then closed unproven: fail closed), never stalls the packet path."""
    send, receive = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (send, receive):
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHANNEL_BYTES)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHANNEL_BYTES)
    return send, receive


def send_key(channel: socket.socket, src: bytes, sport: int, dport: int, key: Secret) -> bool:
    """Send one session key to the acceptor without blocking. False when the channel is full or closed: that
    connection then fails its proof and is reset (fail closed)."""
    try:
        channel.send(pack_key(src, sport, dport, key))
    except OSError:
        return False
    return True


class KeyStore:
    """The acceptor's side: keys received, by flow, until taken or expired."""

    def __init__(self, channel: socket.socket | None) -> None:
        self.channel = channel
        self.keys: dict[Flow, tuple[Secret, float]] = {}

    def drain(self, now: float | None = None) -> None:
        """Read every waiting record; forget expired keys."""
        now = time.monotonic() if now is None else now
        while self.channel is not None:
            try:
                record = self.channel.recv(_RECORD.size + 1)
            except (BlockingIOError, InterruptedError):
                break
            parsed = unpack_key(record)
            if parsed is not None:
                self.keys[parsed[0]] = (parsed[1], now + KEY_TTL_SECONDS)
        if len(self.keys) > MAX_KEYS or (self.keys and next(iter(self.keys.values()))[1] < now):
            for flow in [f for f, (_, expiry) in self.keys.items() if expiry < now]:
                del self.keys[flow]
            while len(self.keys) > MAX_KEYS:
                del self.keys[next(iter(self.keys))]

    def close(self) -> None:
        """Forget every key and close the channel (a relay keeps no other connection's key)."""
        self.keys.clear()
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def take(self, flow: Flow) -> Secret | None:
        """The key for this flow, removed (one relay each)."""
        self.drain()
        entry = self.keys.pop(flow, None)
        return entry[0] if entry is not None else None
