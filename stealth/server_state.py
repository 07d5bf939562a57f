# Why: the server's state directory in one place: server.toml (identity, protected ports, window, queue),
# clients.toml (enrolled clients with their keys, 0600), counters.json (each client's highest accepted
# counter, written only by the running server, before its verdict) and status.json (drop counts).
# Admin commands change clients.toml under a lock; the running server notices and reloads.
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.utils

from stealth.constants import (
    COUNTER_MAX,
    DEFAULT_MARK,
    DEFAULT_QUEUE_NUM,
    DEFAULT_SYN_BURST,
    DEFAULT_SYN_RATE_PER_SECOND,
    DEFAULT_WINDOW,
    KEY_BYTES,
    MAX_PROTECTED_PORTS,
    MAX_WINDOW,
)
from stealth.core.secret import Secret
from stealth.core.token import Binding, PortRange
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.store import Fields, ensure_dir, locked, read_json, read_toml, write_json, write_toml

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")


UNAUTH_CHOICES = ("auto", "drop", "reset")


@dataclass(frozen=True)
class ServerConfig:
    server_id: str
    ports: tuple[int, ...]
    window: int = DEFAULT_WINDOW
    queue: int = DEFAULT_QUEUE_NUM
    mark: int = DEFAULT_MARK
    unauth: str = "auto"  # answer to unauthenticated packets: like the host's unused ports, or forced
    syn_rate_per_second: int = DEFAULT_SYN_RATE_PER_SECOND  # per source prefix, before the queue
    syn_burst: int = DEFAULT_SYN_BURST
    prefix_v4: int = 24
    prefix_v6: int = 64


@dataclass(frozen=True)
class Enrolled:
    """A client record: its profile, the id its counter is stored under, and an admin resync floor."""

    profile: Profile
    enrollment: str
    counter_floor: int = 0


def check_name(name: str) -> str:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise ConfigError("client name", f"{name!r} must be 1..64 of letters, digits and ._-@")
    return name


class ServerState:
    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir)
        self.config_path = self.dir / "server.toml"
        self.clients_path = self.dir / "clients.toml"
        self.counters_path = self.dir / "counters.json"
        self.status_path = self.dir / "status.json"
        self.counters_lock = self.dir / "counters.lock"
        self.admin_lock = self.dir / "admin.lock"
        self.run_lock = self.dir / "run.lock"

    # --- setup -----------------------------------------------------------------------------------
    def init(self, config: ServerConfig) -> None:
        ensure_dir(self.dir)
        self.dir.chmod(0o700)
        if self.config_path.exists():
            raise ConfigError(self.config_path, "already exists; this state directory is initialised")
        check_config(self.config_path, config)
        with locked(self.admin_lock):
            write_toml(self.config_path, {
                "server_id": config.server_id, "ports": list(config.ports), "window": config.window,
                "queue": config.queue, "mark": config.mark, "unauth": config.unauth,
                "syn_rate_per_second": config.syn_rate_per_second, "syn_burst": config.syn_burst,
                "prefix_v4": config.prefix_v4, "prefix_v6": config.prefix_v6,
            })
            if not self.clients_path.exists():
                write_toml(self.clients_path, {"clients": {}})
            if not self.counters_path.exists():
                write_json(self.counters_path, {})

    def load_config(self) -> ServerConfig:
        if not self.dir.is_dir():
            raise ConfigError(self.dir, "state directory does not exist; run 'stealth server init' first")
        f = Fields(self.config_path, read_toml(self.config_path))
        config = ServerConfig(
            server_id=f.text("server_id"),
            ports=f.ports("ports"),
            window=f.integer("window", 1, MAX_WINDOW, DEFAULT_WINDOW),
            queue=f.integer("queue", 0, 65535, DEFAULT_QUEUE_NUM),
            mark=f.integer("mark", 1, 0xFFFFFFFF, DEFAULT_MARK),
            unauth=f.text("unauth", "auto"),
            syn_rate_per_second=f.integer("syn_rate_per_second", 1, 10_000_000, DEFAULT_SYN_RATE_PER_SECOND),
            syn_burst=f.integer("syn_burst", 1, 10_000_000, DEFAULT_SYN_BURST),
            prefix_v4=f.integer("prefix_v4", 8, 32, 24),
            prefix_v6=f.integer("prefix_v6", 16, 128, 64),
        )
        check_config(self.config_path, config)
        return config

    # --- clients ---------------------------------------------------------------------------------
    def load_clients(self) -> dict[str, Enrolled]:
        doc = read_toml(self.clients_path, secret=True)
        table = Fields(self.clients_path, doc).get("clients", dict, {})
        out = {}
        for name, record in table.items():
            where = f"clients.{name}"
            f = Fields(self.clients_path, record, where)
            out[name] = Enrolled(
                Profile.from_doc(self.clients_path, record, where),
                f.text("enrollment"),
                f.integer("counter_floor", 0, COUNTER_MAX, 0),
            )
        return out

    def _save_clients(self, clients: dict[str, Enrolled]) -> None:
        doc = {
            name: {**e.profile.to_doc(), "enrollment": e.enrollment, "counter_floor": e.counter_floor}
            for name, e in sorted(clients.items())
        }
        write_toml(self.clients_path, {"clients": doc})

    def add_client(
        self, name: str, ports: tuple[int, ...], port_bits: bool = True, bind_source: str | None = None,
        port_range: PortRange | None = None,
    ) -> Profile:
        check_name(name)
        config = self.load_config()
        missing = sorted(set(ports) - set(config.ports))
        if missing:
            raise ConfigError(
                self.config_path, f"port {missing[0]} is not protected by this server (ports = "
                f"{list(config.ports)})"
            )
        with locked(self.admin_lock):
            clients = self.load_clients()
            if name in clients:
                raise ConfigError(self.clients_path, f"client {name!r} is already enrolled")
            profile = Profile(
                name=name, server_id=config.server_id, key=Secret(nacl.utils.random(KEY_BYTES)),
                ports=tuple(sorted(set(ports))), window=config.window, port_bits=port_bits,
                port_range=port_range or PortRange(), bind_source=bind_source,
            )
            try:
                profile.binding  # noqa: B018 -- validates the source address
            except ValueError as e:
                raise ConfigError("bind_source", str(e)) from None
            clients[name] = Enrolled(profile, secrets.token_hex(8))
            self._save_clients(clients)
        return profile

    def revoke(self, name: str) -> None:
        with locked(self.admin_lock):
            clients = self.load_clients()
            if name not in clients:
                raise ConfigError(self.clients_path, f"no enrolled client named {name!r}")
            del clients[name]
            self._save_clients(clients)

    def resync(self, name: str, counter: int) -> None:
        """Move a client's window forward so counters counter+1 .. counter+W are live. Never backward."""
        with locked(self.admin_lock):
            clients = self.load_clients()
            if name not in clients:
                raise ConfigError(self.clients_path, f"no enrolled client named {name!r}")
            e = clients[name]
            clients[name] = Enrolled(e.profile, e.enrollment, max(e.counter_floor, counter))
            self._save_clients(clients)

    # --- counters and status ---------------------------------------------------------------------
    def load_counters(self) -> dict[str, int]:
        if not self.counters_path.exists():
            return {}
        doc = read_json(self.counters_path)
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= COUNTER_MAX
            for k, v in doc.items()
        ):
            raise ConfigError(self.counters_path, "expected an object of enrollment id -> counter")
        return doc

    def save_counters(self, counters: dict[str, int]) -> None:
        write_json(self.counters_path, counters)

    def _status_file(self, worker: int | None) -> Path:
        """status.json (the server, or the parent of --workers), status.w<i>.json for worker i."""
        return self.status_path if worker is None else self.dir / f"status.w{worker}.json"

    def write_status(self, status: dict[str, Any], worker: int | None = None) -> None:
        write_json(self._status_file(worker), {**status, "written_at": time.time()})

    def read_status(self, worker: int | None = None) -> dict[str, Any] | None:
        path = self._status_file(worker)
        if not path.exists():
            return None
        doc = read_json(path)
        return doc if isinstance(doc, dict) else None


def check_config(path: Path, config: ServerConfig) -> None:
    try:
        Binding(config.server_id)
    except ValueError as e:
        raise ConfigError(path, f"server_id: {e}") from None
    if len(config.ports) > MAX_PROTECTED_PORTS:
        raise ConfigError(path, f"ports: at most {MAX_PROTECTED_PORTS} protected ports")
    if not 1 <= config.window <= MAX_WINDOW:
        raise ConfigError(path, f"window: must be 1..{MAX_WINDOW}")
    if config.unauth not in UNAUTH_CHOICES:
        raise ConfigError(path, f"unauth: must be one of {', '.join(UNAUTH_CHOICES)}")
