# Why: a protected port has no socket of its own. The real service listens where no stranger can reach
# it (loopback or a Unix socket), and only connections whose SYN the daemon accepted are handed to it.
# So an unauthenticated packet to the protected port meets the kernel's own "nothing listens here", and
# a flushed firewall leaves the service unreachable instead of open. This module is the one place that
# parses and checks a backend address ("127.0.0.1:22", "[::1]:22", "unix:/run/x.sock").
import ipaddress
from dataclasses import dataclass

from stealth.checks import port_of

UNIX_PREFIX = "unix:"
LOOPBACK = {4: "127.0.0.1", 6: "::1"}  # per address family (4, 6)


@dataclass(frozen=True)
class Backend:
    """Where the connections accepted on one protected port go: a loopback TCP address, or a Unix
    socket path (host empty, port 0)."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def family(self) -> str:
        """The kind of socket relay.connect_backend opens: "unix", "ipv4" or "ipv6"."""
        return "unix" if self.path else ("ipv6" if ":" in self.host else "ipv4")

    def __str__(self) -> str:
        if self.path:
            return UNIX_PREFIX + self.path
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_backend(text: str) -> Backend:
    """Parse "HOST:PORT", "[V6]:PORT" or "unix:PATH". HOST must be a loopback address: a service
    reachable from outside would make the protection depend on the firewall staying intact."""
    if text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX):]
        if not path.startswith("/") or "\0" in path:
            raise ValueError(f"{text!r}: a Unix socket backend needs an absolute path")
        return Backend(path=path)
    host, sep, port_text = text.rpartition(":")
    port = port_of(port_text)
    if not sep or port is None:
        raise ValueError(f"{text!r}: expected HOST:PORT, [IPV6]:PORT or unix:PATH")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: the host must be a literal loopback address") from None
    if not addr.is_loopback:
        raise ValueError(f"{text!r}: the backend must listen on loopback (127.0.0.0/8 or ::1) or a Unix "
                         "socket, where no stranger can reach it")
    return Backend(host=str(addr), port=port)


def default_backend(port: int) -> Backend:
    """The service on the same port number, on IPv4 loopback."""
    return Backend(host="127.0.0.1", port=port)


def parse_assignment(text: str) -> tuple[int, Backend]:
    """"PORT=BACKEND", as given to `stealth server init --backend`."""
    port_text, sep, backend = text.partition("=")
    port = port_of(port_text)
    if not sep or port is None:
        raise ValueError(f"{text!r}: expected PORT=BACKEND, for example 22=127.0.0.1:22")
    return port, parse_backend(backend)
