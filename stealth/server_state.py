# Why: the server's files in one place. server.toml (identity, protected ports, window, queue) lives in
# the config directory (/etc/stealth); everything else in the state directory (/var/lib/stealth):
# clients.jsonl (enrolled clients with their keys, 0600: one JSON object per line, streamed, because a
# million clients must load in seconds and TOML parsing took 75 ms per 1,000), counters.json plus
# counters.log (each client's highest accepted counter, written only by the running server, before its
# verdict; see counterlog.py), status.json (drop counts) and accepts.* (each client's last accepted
# knock, see accepts.py). A state directory named without a config directory keeps its own server.toml
# (the layout before /etc/stealth, and every test's), and one that still holds a server.toml is read from
# there. Admin commands rewrite clients.jsonl under a lock, atomically; the running server notices and
# reloads.
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stealth.backend import Backend, default_backend, parse_backend
from stealth.clients_file import (
    CLIENTS_FORMAT,
    CLIENTS_HEADER,
    ClientRecord,
    ClientsReader,
    PendingRotation,
    check_name,
    dump_line,
    load_line,
    record_of,
)
from stealth.constants import (
    CONFIG_DIR_ENV,
    DAEMON_STALE_SECONDS,
    DEFAULT_ACCEPT_PORT,
    DEFAULT_CONFIG_DIR,
    DEFAULT_MARK,
    DEFAULT_QUEUE_NUM,
    DEFAULT_SEAL_DEADLINE_MS,
    DEFAULT_STATE_DIR,
    DEFAULT_SYN_BURST,
    DEFAULT_SYN_RATE_PER_SECOND,
    DEFAULT_WINDOW,
    KEY_BYTES,
    MAX_PROTECTED_PORTS,
    MAX_WINDOW,
    STATE_DIR_ENV,
    SYSTEMD_CONFIG_DIR_ENV,
    SYSTEMD_STATE_DIR_ENV,
)
from stealth.core.secret import Secret
from stealth.core.table import ClientSpec
from stealth.core.token import Binding, PortRange
from stealth.counterlog import CounterLog
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.store import (
    Fields,
    atomic_write,
    atomic_writer,
    check_file,
    ensure_dir,
    locked,
    os_error,
    read_json,
    read_toml,
    write_json,
    write_toml,
)

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
    backends: tuple[tuple[int, Backend], ...] = ()  # (port, backend) where not the default
    accept_port: int = DEFAULT_ACCEPT_PORT  # the daemon's transparent listener, on loopback
    sealed: tuple[int, ...] = ()  # ports whose connections must prove the session key first
    seal_deadline_ms: int = DEFAULT_SEAL_DEADLINE_MS

    def backend(self, port: int) -> Backend:
        """Where accepted connections to `port` go (by default the same port on 127.0.0.1)."""
        return dict(self.backends).get(port) or default_backend(port)


@dataclass(frozen=True)
class Enrolled:
    """A client record with its profile as the server would hand it out (its current key)."""

    record: ClientRecord
    profile: Profile
    newest: Profile  # the profile to hand out: with a pending rotation's new key, else `profile`

    @property
    def enrollment(self) -> str:
        return self.record.enrollment

    @property
    def counter_floor(self) -> int:
        return self.record.counter_floor

    @property
    def rotation(self) -> PendingRotation | None:
        return self.record.rotation


def first_dir(value: str | None) -> Path | None:
    """A directory from an environment variable: unset or empty is None; of systemd's lists (several
    StateDirectory= entries, colon-separated), the first."""
    first = (value or "").split(":")[0]
    return Path(first) if first else None


def resolve_layout(state_dir: Path | None = None, config_dir: Path | None = None,
                   environ: Mapping[str, str] = os.environ) -> tuple[Path, Path]:
    """(state directory, config directory). State: --state-dir, $STEALTH_STATE_DIR, systemd's
    $STATE_DIRECTORY, /var/lib/stealth. Config: --config-dir, $STEALTH_CONFIG_DIR, systemd's
    $CONFIGURATION_DIRECTORY; if none is named, the state directory itself when that was named with
    --state-dir or $STEALTH_STATE_DIR (a directory named on purpose is self-contained), else /etc/stealth."""
    named_state = state_dir or first_dir(environ.get(STATE_DIR_ENV))
    state = named_state or first_dir(environ.get(SYSTEMD_STATE_DIR_ENV)) or Path(DEFAULT_STATE_DIR)
    config = (config_dir or first_dir(environ.get(CONFIG_DIR_ENV))
              or first_dir(environ.get(SYSTEMD_CONFIG_DIR_ENV)))
    return state, config or named_state or Path(DEFAULT_CONFIG_DIR)


def find_config(state_dir: Path, config_dir: Path) -> Path:
    """server.toml: the config directory's, unless the state directory holds its own (the layout before
    /etc/stealth keeps working as it was); both at once is refused rather than guessed."""
    central, own = config_dir / "server.toml", state_dir / "server.toml"
    if os.path.abspath(config_dir) == os.path.abspath(state_dir) or not own.exists():
        return central
    if central.exists():
        raise ConfigError(central, f"and {own} both exist; keep one (the config belongs in {config_dir})")
    return own


class DaemonFiles:
    """What the running daemon writes besides its counters: status.json (and one per worker with
    --workers), and the record of each client's last accepted knock (accepts.py)."""

    dir: Path
    status_path: Path

    def _status_file(self, worker: int | None) -> Path:
        """status.json (the server, or the parent of --workers), status.w<i>.json for worker i."""
        return self.status_path if worker is None else self.dir / f"status.w{worker}.json"

    def write_status(self, status: dict[str, Any], worker: int | None = None) -> None:
        write_json(self._status_file(worker), {**status, "written_at": time.time()})

    def daemon_state(self) -> tuple[str, dict[str, Any] | None]:
        """("running" | "stopped" | "dead" | "stalled" | "never ran", the status document). Running means
        its pid is alive and it wrote its status within DAEMON_STALE_SECONDS; "dead": it said running,
        but its pid is gone (killed or crashed: its rules are still in place, the ports stay closed)."""
        status = self.read_status()
        if status is None:
            return "never ran", None
        if not status.get("running"):
            return "stopped", status
        try:
            os.kill(int(status["pid"]), 0)
        except (KeyError, TypeError, ValueError, ProcessLookupError):
            return "dead", status
        except PermissionError:
            pass  # alive, another user's
        written = status.get("written_at")
        if not isinstance(written, int | float) or time.time() - written > DAEMON_STALE_SECONDS:
            return "stalled", status
        return "running", status

    def read_status(self, worker: int | None = None) -> dict[str, Any] | None:
        path = self._status_file(worker)
        if not path.exists():
            return None
        doc = read_json(path)
        return doc if isinstance(doc, dict) else None

    def accept_paths(self, worker: int | None = None) -> tuple[Path, Path]:
        """(log, snapshot) of the last-accept record of the server, or of worker `worker`."""
        base = "accepts" if worker is None else f"accepts.w{worker}"
        return self.dir / f"{base}.log", self.dir / f"{base}.snap"

    def accept_files(self) -> list[Path]:
        """Every last-accept file, logs before snapshots: the order a reader must take them in (entries
        only ever move from a log into a snapshot, so reading that way never misses one)."""
        return sorted(self.dir.glob("accepts*.log")) + sorted(self.dir.glob("accepts*.snap"))


class ServerState(DaemonFiles):
    def __init__(self, state_dir: Path | str, config_dir: Path | str | None = None) -> None:
        """`config_dir` None: server.toml in the state directory (locate() applies the defaults)."""
        self.dir = Path(state_dir)
        self.config_dir = self.dir if config_dir is None else Path(config_dir)
        self.config_path = find_config(self.dir, self.config_dir)
        self.clients_path = self.dir / "clients.jsonl"
        self.counters_path = self.dir / "counters.json"
        self.journal_path = self.dir / "counters.log"
        self.status_path = self.dir / "status.json"
        self.counters_lock = self.dir / "counters.lock"
        self.admin_lock = self.dir / "admin.lock"
        self.run_lock = self.dir / "run.lock"

    @classmethod
    def locate(cls, state_dir: Path | None = None, config_dir: Path | None = None,
               environ: Mapping[str, str] = os.environ) -> "ServerState":
        """The server's files where flags, environment and defaults put them (resolve_layout)."""
        return cls(*resolve_layout(state_dir, config_dir, environ))

    # --- setup -----------------------------------------------------------------------------------
    def init(self, config: ServerConfig) -> None:
        ensure_dir(self.dir)
        self.dir.chmod(0o700)
        ensure_dir(self.config_dir)
        if self.config_path.exists():
            raise ConfigError(self.config_path, "already exists; this server is initialised")
        check_config(self.config_path, config)
        with locked(self.admin_lock):
            write_toml(self.config_path, {
                "server_id": config.server_id, "ports": list(config.ports), "window": config.window,
                "queue": config.queue, "mark": config.mark, "unauth": config.unauth,
                "syn_rate_per_second": config.syn_rate_per_second, "syn_burst": config.syn_burst,
                "prefix_v4": config.prefix_v4, "prefix_v6": config.prefix_v6,
                "accept_port": config.accept_port, "sealed": list(config.sealed),
                "seal_deadline_ms": config.seal_deadline_ms,
                "backends": {str(port): str(b) for port, b in config.backends},
            })
            if not self.clients_path.exists():
                atomic_write(self.clients_path, CLIENTS_HEADER)
            if not self.counters_path.exists():
                write_json(self.counters_path, {})

    def load_config(self) -> ServerConfig:
        if not self.config_path.exists():
            raise ConfigError(self.config_path, "does not exist; run 'stealth server init' first")
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
            backends=read_backends(f),
            accept_port=f.integer("accept_port", 1, 65535, DEFAULT_ACCEPT_PORT),
            sealed=f.ports("sealed", []) if f.get("sealed", list, []) else (),
            seal_deadline_ms=f.integer("seal_deadline_ms", 100, 600_000, DEFAULT_SEAL_DEADLINE_MS),
        )
        check_config(self.config_path, config)
        return config

    # --- clients ---------------------------------------------------------------------------------
    def count_clients(self) -> int:
        """Enrolled clients, from the line count alone (to size the table before loading)."""
        n = 0
        try:
            with open(self.clients_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    n += chunk.count(b"\n")
        except OSError:
            return 0
        return max(0, n - 1)

    def iter_records(self, config: ServerConfig) -> Iterator[ClientRecord]:
        """Every client record, streamed and checked line by line (a million clients never sit in
        memory as documents at once)."""
        reader = ClientsReader(self.clients_path, config.server_id)
        for lineno, line in self._lines():
            yield reader.record(lineno, line)

    def iter_clients(self, config: ServerConfig | None = None) -> Iterator[Enrolled]:
        """Every enrolled client with its profile (server id, window and sealed ports are the server's)."""
        config = config or self.load_config()
        for record in self.iter_records(config):
            args = (config.server_id, config.window, config.sealed)
            yield Enrolled(record, record.profile(*args), record.profile(*args, newest=True))

    def iter_specs(self, config: ServerConfig, now_s: float) -> Iterator[tuple[ClientSpec, int]]:
        """(spec, admin counter floor) of every key that may open at `now_s` (unix seconds): what the
        token table is built from. A client in a rotation has two (clients_file.ClientRecord.specs)."""
        reader = ClientsReader(self.clients_path, config.server_id)
        for lineno, line in self._lines():
            record = reader.record(lineno, line)
            yield from record.specs(reader.binding(record), now_s)

    def load_clients(self) -> dict[str, Enrolled]:
        out: dict[str, Enrolled] = {}
        for e in self.iter_clients():
            if e.profile.name in out:
                raise ConfigError(self.clients_path, f"client {e.profile.name!r} is enrolled twice")
            out[e.profile.name] = e
        return out

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """The client lines of clients.jsonl after checking its mode and header."""
        path = self.clients_path
        try:
            f = open(path, "rb")
        except OSError as e:
            raise os_error(path, e) from None
        with f:
            check_file(path, os.fstat(f.fileno()), secret=True)
            header = f.readline()
            try:
                doc = json.loads(header)
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if not isinstance(doc, dict) or doc.get("format") != CLIENTS_FORMAT:
                raise ConfigError(path, f"line 1: expected the header {{\"format\": \"{CLIENTS_FORMAT}\"}}")
            for lineno, line in enumerate(f, 2):
                if line.strip():
                    yield lineno, line

    def _rewrite(self, change: Callable[[dict[str, Any]], dict[str, Any] | None],
                 append: Iterable[bytes] = (), before_commit: Callable[[], None] = lambda: None) -> None:
        """Stream clients.jsonl into a replacement (atomic, 0600): `change` maps each client document to
        its new form (None: remove it); `append` adds lines at the end. Finished key rotations are folded
        in on the way (ClientRecord.settle). If anything raises, including `before_commit`, the old file
        stays as it was."""
        settle = _Settler(self)
        with atomic_writer(self.clients_path) as out:
            out.write(CLIENTS_HEADER)
            if self.clients_path.exists():
                for lineno, line in self._lines():
                    doc = load_line(self.clients_path, lineno, line)
                    settled = settle(lineno, doc)
                    new = change(settled)
                    if new is not None:
                        out.write(line if new is doc else dump_line(new))
            for line in append:
                out.write(line)
            before_commit()

    def add_client(
        self, name: str, ports: tuple[int, ...], port_bits: bool = True, bind_source: str | None = None,
        port_range: PortRange | None = None,
    ) -> Profile:
        return self.add_clients([name], ports, port_bits, bind_source, port_range)[0]

    def add_clients(
        self, names: Iterable[str], ports: tuple[int, ...], port_bits: bool = True,
        bind_source: str | None = None, port_range: PortRange | None = None,
    ) -> list[Profile]:
        """Enroll many clients in one rewrite of clients.jsonl (the bulk path: a million clients take one
        pass, not a million). Returns their profiles, to hand to the clients."""
        config = self.load_config()
        missing = sorted(set(ports) - set(config.ports))
        if missing:
            raise ConfigError(
                self.config_path, f"port {missing[0]} is not protected by this server (ports = "
                f"{list(config.ports)})"
            )
        ports = tuple(sorted(set(ports)))
        profiles = []
        wanted = set()
        for name in names:
            check_name(name)
            if name in wanted:
                raise ConfigError("client name", f"{name!r} is given twice")
            wanted.add(name)
            profile = Profile(
                name=name, server_id=config.server_id, key=Secret(secrets.token_bytes(KEY_BYTES)),
                ports=ports, window=config.window, port_bits=port_bits,
                port_range=port_range or PortRange(), bind_source=bind_source,
                sealed=tuple(p for p in ports if p in config.sealed),
            )
            profiles.append(profile)
        if profiles:
            try:
                profiles[0].binding  # noqa: B018 -- validates the source address
            except ValueError as e:
                raise ConfigError("bind_source", str(e)) from None
        with locked(self.admin_lock):

            def keep(doc: dict[str, Any]) -> dict[str, Any]:
                if doc.get("name") in wanted:
                    raise ConfigError(self.clients_path, f"client {doc.get('name')!r} is already enrolled")
                return doc

            self._rewrite(keep, (dump_line(record_of(p, new_enrollment()).to_doc()) for p in profiles))
        return profiles

    def revoke(self, *names: str) -> None:
        """Remove clients, in one rewrite; every name must be enrolled."""
        if len(names) == 1:
            self._change_one(names[0], lambda doc: None)
            return
        wanted = set(names)
        seen: set[str] = set()

        def drop(doc: dict[str, Any]) -> dict[str, Any] | None:
            if doc.get("name") in wanted:
                seen.add(doc["name"])
                return None
            return doc

        def check() -> None:
            if seen != wanted:
                raise ConfigError(self.clients_path, f"no enrolled client named {sorted(wanted - seen)[0]!r}")

        with locked(self.admin_lock):
            self._rewrite(drop, before_commit=check)

    def rotate(self, name: str, overlap_s: int, now_s: float
               ) -> tuple[Profile, PendingRotation, PendingRotation | None]:
        """Give client `name` a new key; its old key keeps opening until the new one is first used or
        `overlap_s` seconds from `now_s` have passed (core/rotation.py). Returns the profile with the new
        key, the rotation, and the earlier pending rotation it replaced (whose unused new key no longer
        opens), for undo_rotation()."""
        config = self.load_config()
        rotation = PendingRotation(Secret(secrets.token_bytes(KEY_BYTES)), new_enrollment(),
                                   int(now_s) + overlap_s)
        out: list[tuple[Profile, PendingRotation, PendingRotation | None]] = []

        def rotate_one(record: ClientRecord) -> ClientRecord:
            new = replace(record, rotation=rotation)
            profile = new.profile(config.server_id, config.window, config.sealed, newest=True)
            out.append((profile, rotation, record.rotation))
            return new

        self._change_record(name, rotate_one)
        return out[0]

    def undo_rotation(self, name: str, rotation: PendingRotation, previous: PendingRotation | None) -> None:
        """Put back `previous` where `rotation` (from rotate()) still stands: its profile never reached
        the client."""
        self._change_record(name, lambda r: replace(r, rotation=previous) if r.rotation == rotation else r)

    def _change_record(self, name: str, change: Callable[[ClientRecord], ClientRecord]) -> None:
        reader = ClientsReader(self.clients_path, self.load_config().server_id)
        self._change_one(name, lambda doc: change(reader.from_doc(0, doc)).to_doc())

    def resync(self, name: str, counter: int) -> None:
        """Move a client's window forward so counter+1 .. counter+W are live. Never backward."""

        def floor(doc: dict[str, Any]) -> dict[str, Any]:
            old = doc.get("counter_floor", 0)
            return {**doc, "counter_floor": max(old if isinstance(old, int) else 0, counter)}

        self._change_one(name, floor)

    def _change_one(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        found = False

        def one(doc: dict[str, Any]) -> dict[str, Any] | None:
            nonlocal found
            if doc.get("name") != name:
                return doc
            found = True
            return change(doc)

        def check() -> None:
            if not found:
                raise ConfigError(self.clients_path, f"no enrolled client named {name!r}")

        with locked(self.admin_lock):
            self._rewrite(one, before_commit=check)

    # --- counters and status ---------------------------------------------------------------------
    def counter_log(self) -> CounterLog:
        return CounterLog(self.counters_path, self.journal_path)

    def load_counters(self) -> dict[str, int]:
        """enrollment id -> highest accepted counter (snapshot plus journal), without changing them."""
        return self.counter_log().read()


def new_enrollment() -> str:
    """A fresh enrollment id: what a key's counter is stored under (counterlog.is_ident)."""
    return secrets.token_hex(8)


class _Settler:
    """Folds finished rotations into clients.jsonl documents during a rewrite; reads server.toml and the
    counters only when the file holds a rotation."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.now_s = time.time()
        self.reader: ClientsReader | None = None
        self.counters: dict[str, int] = {}

    def __call__(self, lineno: int, doc: dict[str, Any]) -> dict[str, Any]:
        if "next_key" not in doc:
            return doc
        if self.reader is None:
            self.reader = ClientsReader(self.state.clients_path, self.state.load_config().server_id)
            self.counters = self.state.load_counters()
        record = self.reader.from_doc(lineno, doc)
        settled = record.settle(self.counters, self.now_s)
        return doc if settled is record else settled.to_doc()


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
    stray = [port for port, _ in config.backends if port not in config.ports]
    if stray:
        raise ConfigError(path, f"backends: port {stray[0]} is not a protected port")
    if config.accept_port in config.ports:
        raise ConfigError(path, "accept_port: must not be a protected port")
    unprotected = [port for port in config.sealed if port not in config.ports]
    if unprotected:
        raise ConfigError(path, f"sealed: port {unprotected[0]} is not a protected port")


def read_backends(f: Fields) -> tuple[tuple[int, Backend], ...]:
    """server.toml's [backends] table: "PORT" = "BACKEND"."""
    out = []
    for key, value in sorted(f.get("backends", dict, {}).items()):
        try:
            if not key.isdigit() or not isinstance(value, str):
                raise ValueError(f"{key!r}: expected \"PORT\" = \"HOST:PORT\" or \"unix:PATH\"")
            out.append((int(key), parse_backend(value)))
        except ValueError as e:
            raise f.fault("backends", str(e)) from None
    return tuple(out)
