# Why: systemd's readiness protocol (sd_notify) without a dependency: one datagram of "KEY=value" lines to
# the AF_UNIX socket named in $NOTIFY_SOCKET ("@..." is the abstract namespace). With Type=notify the
# unit counts as started only when the daemon sends READY=1, which `stealth server run` does after its
# rules are in place and its queue is bound: `Before=ssh.service` then orders sshd after the gate, not
# after a fork. Without $NOTIFY_SOCKET (not under systemd) every call does nothing.
import logging
import os
import socket

from stealth.constants import NOTIFY_SOCKET_ENV

log = logging.getLogger("stealth.notify")


def notify_address(value: str) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET names: a path, or "@name" for the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms: not used by systemd for services on this host


def notify(*fields: str) -> bool:
    """Send fields (e.g. "READY=1", "STATUS=...") to systemd. True when a datagram went out. A failure
    is logged, never raised: readiness is advisory, the daemon's work does not depend on it."""
    value = os.environ.get(NOTIFY_SOCKET_ENV, "")
    address = notify_address(value) if value else None
    if address is None:
        return False
    message = "\n".join(f.replace("\n", " ") for f in fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as e:
        log.warning("cannot notify systemd at %s: %s", value, e)
        return False
    return True
