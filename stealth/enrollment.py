# Why: clients.jsonl administration in one place, apart from where the server's files are (server_state.py):
# reading it (streamed line by line: a million clients must load in seconds) and changing it (enroll,
# revoke, rotate a key, resync), each change one atomic rewrite under the admin lock that folds finished
# key rotations in on the way. ServerState inherits both, so callers keep saying state.add_client(...).
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stealth.checks import enrolled_twice
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
from stealth.constants import KEY_BYTES
from stealth.core.secret import Secret
from stealth.core.table import ClientSpec
from stealth.core.token import PortRange
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.server_config import ServerConfig
from stealth.store import atomic_writer, check_file, locked, os_error


@dataclass(frozen=True)
class Enrolled:
    """A client record with its profile as the server would hand it out (its current key)."""

    record: ClientRecord
    profile: Profile
    newest: Profile  # the profile to hand out: with a pending rotation's new key, else `profile`

    @property
    def enrollment(self) -> str:
        """The enrollment id its current key's counter is stored under."""
        return self.record.enrollment

    @property
    def counter_floor(self) -> int:
        """The counter an admin resync moved its window past (0 if never)."""
        return self.record.counter_floor

    @property
    def rotation(self) -> PendingRotation | None:
        """Its pending key rotation, if the new key was never used yet."""
        return self.record.rotation


class EnrolledClients:
    """Reading clients.jsonl: every record streamed and checked, or all at once by name. Needs the
    paths and load_config() of a ServerState."""

    clients_path: Path
    config_path: Path
    admin_lock: Path

    def load_config(self) -> ServerConfig:
        """server.toml, parsed and checked (ServerState's)."""
        raise NotImplementedError

    def load_counters(self) -> dict[str, int]:
        """enrollment id -> highest accepted counter (ServerState's)."""
        raise NotImplementedError

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
        """Every enrolled client by name, all at once (admin commands; the daemon streams). ConfigError for a
        bad line or a name enrolled twice."""
        out: dict[str, Enrolled] = {}
        for e in self.iter_clients():
            if e.profile.name in out:
                raise ConfigError(self.clients_path, enrolled_twice(e.profile.name))
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


class Enrollment(EnrolledClients):
    """Changing clients.jsonl: enroll, revoke, rotate a key (and undo that), resync. Each change is one
    atomic rewrite under the admin lock; a running server notices and reloads."""

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
        """Enroll one client with a fresh key (add_clients); returns its profile. ConfigError for a bad or
        taken name or a port the server does not protect."""
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


def new_enrollment() -> str:
    """A fresh enrollment id: what a key's counter is stored under (counterlog.is_ident)."""
    return secrets.token_hex(8)


class _Settler:
    """Folds finished rotations into clients.jsonl documents during a rewrite; reads server.toml and the
    counters only when the file holds a rotation."""

    def __init__(self, state: EnrolledClients) -> None:
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
