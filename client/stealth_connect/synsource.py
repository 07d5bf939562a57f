# Why: where a knock's socket comes from. A process with CAP_NET_ADMIN prepares it itself (TCP_REPAIR);
# any other asks the client agent, a small root process, which prepares the same socket and passes it
# over a Unix socket. Which one is settled before a counter is taken, so a user with neither privilege
# nor agent gets one line saying what to do, and spends nothing.
from __future__ import annotations

import os
import socket
import struct

from stealth.constants import AGENT_MAX_REQUESTS, AGENT_REPLY_SECONDS, AGENT_SOCKET_ENV, DEFAULT_AGENT_SOCKET
from stealth.errors import ClientError
from stealth_connect.agent_proto import GREETING_OK, STATUS_OK, STATUS_TEXT, encode_request
from stealth_connect.syn import TCP_REPAIR, repaired_socket

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms of every login
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object  # SynSource is a protocol for mypy only

START_AGENT_HINT = ("ask root to start the stealth agent (`stealth client agent`, or `systemctl enable --now "
                    "stealth-agent.socket`) and to add you to its group")


class SynSource(Protocol):
    """Makes fresh, unbound TCP sockets whose connect() will send the SYN with a chosen ISN."""

    def socket_for(self, family: int, isn: int) -> socket.socket:
        """A fresh, unbound TCP socket of `family` whose connect() sends its SYN with `isn`. ClientError
        (one line) when it cannot be made; nothing is spent either way."""
        ...

    def close(self) -> None:
        """Release what the source holds (the agent connection); sockets it made stay usable."""
        ...


class LocalRepair:
    """This process has CAP_NET_ADMIN: it prepares the socket itself."""

    def socket_for(self, family: int, isn: int) -> socket.socket:
        """repaired_socket() in this process (PermissionError without CAP_NET_ADMIN)."""
        return repaired_socket(family, isn)

    def close(self) -> None:
        pass


class AgentLink:
    """A connection to the agent that has greeted us (so it accepts this user)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: socket.socket | None = None
        self._requests = 0
        self._connect()

    def _connect(self) -> None:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.settimeout(AGENT_REPLY_SECONDS)
        try:
            conn.connect(self.path)
            greeting = conn.recv(1)
        except PermissionError:
            conn.close()
            raise ClientError(f"this user may not use the stealth agent at {self.path} (permission denied): "
                              "ask root to add you to its group; nothing was spent") from None
        except OSError as e:
            conn.close()
            raise ClientError(f"choosing the SYN's sequence number needs CAP_NET_ADMIN, and no stealth agent "
                              f"answers at {self.path} ({e.strerror or e}): {START_AGENT_HINT}; nothing was "
                              "spent") from None
        agent_uid = struct.unpack("=3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if agent_uid != 0:  # a socket anyone could have put there would learn knocks before they leave
            conn.close()
            raise ClientError(f"the process at {self.path} is not a stealth agent run by root "
                              f"(uid {agent_uid}): nothing was sent to it")
        if greeting != GREETING_OK:
            conn.close()
            raise ClientError(f"the stealth agent at {self.path} refused this user (uid {os.getuid()} is not "
                              "in its group): ask root to add you to it; nothing was spent")
        self._conn, self._requests = conn, 0

    def socket_for(self, family: int, isn: int) -> socket.socket:
        """Ask the agent for the socket, once more on a fresh connection if it closed an idle one. ClientError
        (one line) when it refuses, fails or passes a socket of the wrong kind; nothing is spent either
        way."""
        try:
            status, fds = self._ask(family, isn)
        except OSError:
            status, fds = b"", []
        if not status:  # the agent closed an idle connection meanwhile (a silent first address): again
            self.close()
            try:
                status, fds = self._ask(family, isn)
            except OSError as e:
                raise ClientError(f"the stealth agent at {self.path} failed: {e.strerror or e}") from None
        if not status or status[0] != STATUS_OK or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            why = STATUS_TEXT.get(status[0], "no answer") if status else "it closed the connection"
            raise ClientError(f"the stealth agent at {self.path} could not help: {why}")
        sock = socket.socket(fileno=fds[0])
        if sock.family != family or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise ClientError(f"the stealth agent at {self.path} passed a socket of the wrong kind")
        return sock

    def _ask(self, family: int, isn: int) -> tuple[bytes, list[int]]:
        """One request on the current connection (a new one after AGENT_MAX_REQUESTS); nothing is
        spent before the socket exists, so asking again is always safe."""
        if self._conn is None or self._requests >= AGENT_MAX_REQUESTS:
            self.close()
            self._connect()
        assert self._conn is not None
        self._requests += 1
        self._conn.send(encode_request(family, isn))
        status, fds, _, _ = socket.recv_fds(self._conn, 1, 1)
        return status, fds

    def close(self) -> None:
        """Close the connection to the agent (idempotent); a later socket_for() opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def agent_path() -> str:
    """The agent's socket: $STEALTH_AGENT_SOCKET, else /run/stealth/agent.sock."""
    return os.environ.get(AGENT_SOCKET_ENV) or DEFAULT_AGENT_SOCKET


def has_repair_privilege() -> bool:
    """Whether this process may put a socket into TCP repair mode (CAP_NET_ADMIN in its network
    namespace). Tried on a throwaway socket: the capability sets alone do not say it for user
    namespaces."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
        except PermissionError:
            return False
    return True


def open_syn_source() -> SynSource:
    """LocalRepair with the privilege, else a greeted AgentLink; ClientError (one line) when neither."""
    if has_repair_privilege():
        return LocalRepair()
    return AgentLink(agent_path())
