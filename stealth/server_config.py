# Why: server.toml has one schema, and this is its one home: ServerConfig holds the settings, from_doc()
# reads and checks a parsed server.toml, to_doc() is what `stealth server init` writes, check_config()
# the rules between fields. Everything else (the daemon's rules, `status`, the CLI) reads a ServerConfig,
# never the document.
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stealth.backend import Backend, default_backend, parse_backend
from stealth.constants import (
    DEFAULT_ACCEPT_PORT,
    DEFAULT_MARK,
    DEFAULT_PREFIX_V4_BITS,
    DEFAULT_PREFIX_V6_BITS,
    DEFAULT_QUEUE_NUM,
    DEFAULT_SEAL_DEADLINE_MS,
    DEFAULT_SYN_BURST,
    DEFAULT_SYN_RATE_PER_SECOND,
    DEFAULT_WINDOW,
    MAX_MARK,
    MAX_PROTECTED_PORTS,
    MAX_QUEUE_NUM,
    MAX_SEAL_DEADLINE_MS,
    MAX_SYN_RATE_PER_SECOND,
    MAX_TCP_PORT,
    MAX_WINDOW,
    MIN_PREFIX_V4_BITS,
    MIN_PREFIX_V6_BITS,
    MIN_SEAL_DEADLINE_MS,
)
from stealth.core.token import Binding
from stealth.errors import ConfigError
from stealth.store import Fields


class UnauthMode(enum.StrEnum):
    """The answer to unauthenticated packets: like this host's unused ports (AUTO, decided per address
    family when the rules are installed), silence (DROP) or the kernel's RST (RESET)."""

    AUTO = "auto"
    DROP = "drop"
    RESET = "reset"


UNAUTH_CHOICES = tuple(str(mode) for mode in UnauthMode)  # ("auto", "drop", "reset"), for --unauth


@dataclass(frozen=True)
class ServerConfig:
    """server.toml, validated by check_config: server id, protected ports, window, queue and mark, unauth
    mode, per-prefix SYN limit, backends, accept port, sealed ports."""

    server_id: str
    ports: tuple[int, ...]
    window: int = DEFAULT_WINDOW
    queue: int = DEFAULT_QUEUE_NUM
    mark: int = DEFAULT_MARK
    unauth: UnauthMode = UnauthMode.AUTO  # answer to unauthenticated packets
    syn_rate_per_second: int = DEFAULT_SYN_RATE_PER_SECOND  # per source prefix, before the queue
    syn_burst: int = DEFAULT_SYN_BURST
    prefix_v4: int = DEFAULT_PREFIX_V4_BITS
    prefix_v6: int = DEFAULT_PREFIX_V6_BITS
    backends: tuple[tuple[int, Backend], ...] = ()  # (port, backend) where not the default
    accept_port: int = DEFAULT_ACCEPT_PORT  # the daemon's transparent listener, on loopback
    sealed: tuple[int, ...] = ()  # ports whose connections must prove the session key first
    seal_deadline_ms: int = DEFAULT_SEAL_DEADLINE_MS

    def backend(self, port: int) -> Backend:
        """Where accepted connections to `port` go (by default the same port on 127.0.0.1)."""
        return dict(self.backends).get(port) or default_backend(port)

    @classmethod
    def from_doc(cls, path: Path, doc: Any) -> "ServerConfig":
        """The config a parsed server.toml describes, checked (check_config); missing fields take their
        defaults. Raises ConfigError naming `path` and the field at fault, in one line."""
        f = Fields(path, doc)
        server_id, ports = f.text("server_id"), f.ports("ports")
        window = f.integer("window", 1, MAX_WINDOW, DEFAULT_WINDOW)
        queue = f.integer("queue", 0, MAX_QUEUE_NUM, DEFAULT_QUEUE_NUM)
        mark = f.integer("mark", 1, MAX_MARK, DEFAULT_MARK)
        unauth = f.text("unauth", UnauthMode.AUTO.value)
        syn_rate = f.integer("syn_rate_per_second", 1, MAX_SYN_RATE_PER_SECOND, DEFAULT_SYN_RATE_PER_SECOND)
        syn_burst = f.integer("syn_burst", 1, MAX_SYN_RATE_PER_SECOND, DEFAULT_SYN_BURST)
        prefix_v4 = f.integer("prefix_v4", MIN_PREFIX_V4_BITS, 32, DEFAULT_PREFIX_V4_BITS)
        prefix_v6 = f.integer("prefix_v6", MIN_PREFIX_V6_BITS, 128, DEFAULT_PREFIX_V6_BITS)
        backends = read_backends(f)
        accept_port = f.integer("accept_port", 1, MAX_TCP_PORT, DEFAULT_ACCEPT_PORT)
        sealed = f.ports("sealed", []) if f.get("sealed", list, []) else ()
        seal_deadline_ms = f.integer("seal_deadline_ms", MIN_SEAL_DEADLINE_MS, MAX_SEAL_DEADLINE_MS,
                                     DEFAULT_SEAL_DEADLINE_MS)
        _check_identity(path, server_id, ports, window)  # check_config's order: these before unauth
        config = cls(
            server_id=server_id, ports=ports, window=window, queue=queue, mark=mark,
            unauth=unauth_mode(path, unauth), syn_rate_per_second=syn_rate, syn_burst=syn_burst,
            prefix_v4=prefix_v4, prefix_v6=prefix_v6, backends=backends, accept_port=accept_port,
            sealed=sealed, seal_deadline_ms=seal_deadline_ms,
        )
        check_config(path, config)
        return config

    def to_doc(self) -> dict[str, Any]:
        """server.toml's table, ready for TOML (what `stealth server init` writes); from_doc() reads it
        back as the same config."""
        return {
            "server_id": self.server_id, "ports": list(self.ports), "window": self.window,
            "queue": self.queue, "mark": self.mark, "unauth": str(self.unauth),
            "syn_rate_per_second": self.syn_rate_per_second, "syn_burst": self.syn_burst,
            "prefix_v4": self.prefix_v4, "prefix_v6": self.prefix_v6,
            "accept_port": self.accept_port, "sealed": list(self.sealed),
            "seal_deadline_ms": self.seal_deadline_ms,
            "backends": {str(port): str(b) for port, b in self.backends},
        }


def unauth_mode(path: Path, text: str) -> UnauthMode:
    """The UnauthMode named `text`; ConfigError naming `path` and the field otherwise."""
    if text not in UNAUTH_CHOICES:
        raise ConfigError(path, f"unauth: must be one of {', '.join(UNAUTH_CHOICES)}")
    return UnauthMode(text)


def _check_identity(path: Path, server_id: str, ports: tuple[int, ...], window: int) -> None:
    try:
        Binding(server_id)
    except ValueError as e:
        raise ConfigError(path, f"server_id: {e}") from None
    if len(ports) > MAX_PROTECTED_PORTS:
        raise ConfigError(path, f"ports: at most {MAX_PROTECTED_PORTS} protected ports")
    if not 1 <= window <= MAX_WINDOW:
        raise ConfigError(path, f"window: must be 1..{MAX_WINDOW}")


def check_config(path: Path, config: ServerConfig) -> None:
    """ConfigError naming `path` and the field when `config` is inconsistent."""
    _check_identity(path, config.server_id, config.ports, config.window)
    unauth_mode(path, config.unauth)
    stray = [port for port, _ in config.backends if port not in config.ports]
    if stray:
        raise ConfigError(path, f"backends: port {stray[0]} is not a protected port")
    if config.accept_port in config.ports:
        raise ConfigError(path, "accept_port: must not be a protected port")
    unprotected = [port for port in config.sealed if port not in config.ports]
    if unprotected:
        raise ConfigError(path, f"sealed: port {unprotected[0]} is not a protected port")


def read_backends(f: Fields) -> tuple[tuple[int, Backend], ...]:
    """server.toml's [backends] table: "PORT" = "BACKEND", as (port, backend) sorted by port. ConfigError
    naming the field for a key that is not a port or a value that is not a backend."""
    out = []
    for key, value in sorted(f.get("backends", dict, {}).items()):
        try:
            if not key.isdigit() or not isinstance(value, str):
                raise ValueError(f"{key!r}: expected \"PORT\" = \"HOST:PORT\" or \"unix:PATH\"")
            out.append((int(key), parse_backend(value)))
        except ValueError as e:
            raise f.fault("backends", str(e)) from None
    return tuple(out)
