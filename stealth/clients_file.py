# Why: clients.jsonl has one schema, written and read here only. A million clients must load in seconds,
# so lines are streamed and checked field by field (no generic validator per line) into one frozen
# ClientRecord, from which both the token table's specs and the admin's profiles are made. A record may
# carry a pending key rotation (core/rotation.py): the new key, its enrollment id and the deadline of the
# old key; settle() folds a finished rotation into the record.
import base64
import ipaddress
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stealth.checks import PORTS_RULE, is_port, key_of
from stealth.constants import (
    COUNTER_MAX,
    DEFAULT_PORT_HIGH,
    DEFAULT_PORT_LOW,
    DEFAULT_PORT_STEP,
    MAX_CLIENT_NAME_CHARS,
    MAX_PROTECTED_PORTS,
    MAX_TCP_PORT,
)
from stealth.core.rotation import old_key_live, successor_name
from stealth.core.secret import Secret
from stealth.core.table import ClientSpec
from stealth.core.token import Binding, PortRange
from stealth.counterlog import is_ident
from stealth.errors import ConfigError
from stealth.profile import Profile

CLIENTS_FORMAT = "stealth-clients-v1"
CLIENTS_HEADER = (json.dumps({"format": CLIENTS_FORMAT}) + "\n").encode()
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
NAME_RULE = f"must be 1..{MAX_CLIENT_NAME_CHARS} of letters, digits and ._-@"
_ROTATION_FIELDS = ("next_key", "next_enrollment", "rotate_until")
_CLIENT_FIELDS = {"name", "key", "enrollment", "ports", "port_bits", "port_low", "port_high", "port_step",
                  "bind_source", "counter_floor", *_ROTATION_FIELDS}


def valid_name(name: object) -> bool:
    """A client name: 1..MAX_CLIENT_NAME_CHARS of letters, digits and ._-@ (never "/", which
    core/rotation.py's successor names use)."""
    return (isinstance(name, str) and 0 < len(name) <= MAX_CLIENT_NAME_CHARS
            and NAME_CHARS.issuperset(name))


def check_name(name: str) -> str:
    """`name` if it is a valid client name, else a one-line ConfigError."""
    if not valid_name(name):
        raise ConfigError("client name", f"{name!r} {NAME_RULE}")
    return name


@dataclass(frozen=True)
class PendingRotation:
    """A client's new key while its old one still opens: until `until_s` (unix seconds), or until the new
    key's first accepted knock."""

    key: Secret = field(repr=False)
    enrollment: str
    until_s: int


@dataclass(frozen=True)
class ClientRecord:
    """One clients.jsonl line, checked. Server id and window are the server's, not the record's."""

    name: str
    key: Secret = field(repr=False)
    enrollment: str
    ports: tuple[int, ...]
    port_bits: bool = True
    port_range: PortRange = field(default_factory=PortRange)
    bind_source: str | None = None
    counter_floor: int = 0
    rotation: PendingRotation | None = None

    def profile(self, server_id: str, window: int, sealed: tuple[int, ...], newest: bool = False) -> Profile:
        """The client's profile (with `newest`: with the pending rotation's new key, if there is one)."""
        key = self.rotation.key if newest and self.rotation else self.key
        return Profile(self.name, server_id, key, self.ports, window, self.port_bits, self.port_range,
                       self.bind_source, tuple(p for p in self.ports if p in sealed))

    def specs(self, binding: Binding, now_s: float) -> Iterator[tuple[ClientSpec, int]]:
        """(spec, counter floor) of each key that may open at `now_s`: a rotation's new key first (the
        token table retires the old one when the new one has been used), then the old key unless its
        deadline has passed."""
        r = self.rotation
        if r is not None:
            yield ClientSpec(successor_name(self.name), r.key, binding, self.ports,
                             bytes.fromhex(r.enrollment)), 0
            if now_s >= r.until_s:
                return
        yield ClientSpec(self.name, self.key, binding, self.ports, bytes.fromhex(self.enrollment),
                         None if r is None else r.until_s), self.counter_floor

    def to_doc(self) -> dict[str, Any]:
        """The clients.jsonl object, defaults left out so a million lines stay small."""
        doc: dict[str, Any] = {
            "name": self.name, "key": _b64(self.key), "enrollment": self.enrollment,
            "ports": list(self.ports),
        }
        if not self.port_bits:
            doc["port_bits"] = False
        if self.port_range != PortRange():
            doc.update(port_low=self.port_range.low, port_high=self.port_range.high,
                       port_step=self.port_range.step)
        if self.bind_source:
            doc["bind_source"] = self.bind_source
        if self.counter_floor:
            doc["counter_floor"] = self.counter_floor
        if self.rotation is not None:
            doc.update(next_key=_b64(self.rotation.key), next_enrollment=self.rotation.enrollment,
                       rotate_until=self.rotation.until_s)
        return doc

    def settle(self, counters: Mapping[str, int], now_s: float) -> "ClientRecord":
        """This record with a finished rotation folded in (the new key's first knock was accepted, its
        counter is in `counters`, or the old key's deadline passed); unchanged otherwise."""
        r = self.rotation
        if r is None or old_key_live(r.until_s, now_s, counters.get(r.enrollment, 0)):
            return self
        return replace(self, key=r.key, enrollment=r.enrollment, counter_floor=0, rotation=None)


def _b64(key: Secret) -> str:
    return base64.b64encode(key.value).decode()


def record_of(profile: Profile, enrollment: str) -> ClientRecord:
    """A new client's record, from the profile handed to it."""
    return ClientRecord(profile.name, profile.key, enrollment, profile.ports, profile.port_bits,
                        profile.port_range, profile.bind_source)


def dump_line(doc: dict[str, Any]) -> bytes:
    """One clients.jsonl line (compact JSON and a newline) for a record's document."""
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()


def load_line(path: Path, lineno: int, line: bytes) -> dict[str, Any]:
    """One clients.jsonl line as a JSON object, or a ConfigError naming the file and line."""
    try:
        doc = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(path, f"line {lineno}: invalid JSON ({getattr(e, 'msg', 'not UTF-8')})") from None
    if not isinstance(doc, dict):
        raise ConfigError(path, f"line {lineno}: expected an object")
    return doc


class ClientsReader:
    """Checks clients.jsonl lines into ClientRecords, sharing port tuples and Bindings between clients
    (a million clients mostly have a few shapes)."""

    def __init__(self, path: Path, server_id: str) -> None:
        self.path = path
        self.server_id = server_id
        self._bindings: dict[tuple[bool, PortRange, str | None], Binding] = {}
        self._ports: dict[tuple[int, ...], tuple[int, ...]] = {}

    def _fault(self, lineno: int, name: object, what: str) -> ConfigError:
        who = f" ({name})" if valid_name(name) else ""
        return ConfigError(self.path, f"line {lineno}{who}: {what}")

    def _int(self, lineno: int, doc: dict[str, Any], name: str, lo: int, hi: int, default: int) -> int:
        v = doc.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._fault(lineno, doc.get("name"), f"{name}: must be an integer in {lo}..{hi}")
        return v

    def _key(self, lineno: int, doc: dict[str, Any], name: str) -> Secret:
        raw = key_of(doc.get(name))
        if isinstance(raw, str):
            raise self._fault(lineno, doc.get("name"), f"{name}: {raw}")
        return Secret(raw)

    def _enrollment(self, lineno: int, doc: dict[str, Any], name: str) -> str:
        value = doc.get(name)
        if not isinstance(value, str) or not is_ident(value):
            raise self._fault(lineno, doc.get("name"), f"{name}: must be 16 lowercase hex digits")
        return value

    def record(self, lineno: int, line: bytes) -> ClientRecord:
        """The checked record of line `lineno`; a bad field is one ConfigError naming file, line, client
        and field."""
        return self.from_doc(lineno, load_line(self.path, lineno, line))

    def from_doc(self, lineno: int, doc: dict[str, Any]) -> ClientRecord:
        """record(), from the line's parsed object."""
        if not valid_name(doc.get("name")):
            raise self._fault(lineno, None, f"name: {NAME_RULE}")
        name: str = doc["name"]
        unknown = doc.keys() - _CLIENT_FIELDS
        if unknown:
            raise self._fault(lineno, name, f"unknown field {sorted(unknown)[0]!r}")
        return ClientRecord(
            name, self._key(lineno, doc, "key"), self._enrollment(lineno, doc, "enrollment"),
            self._port_tuple(lineno, doc), self._port_bits(lineno, doc), self._port_range(lineno, doc),
            self._source(lineno, doc), self._int(lineno, doc, "counter_floor", 0, COUNTER_MAX, 0),
            self._rotation(lineno, doc),
        )

    def _port_tuple(self, lineno: int, doc: dict[str, Any]) -> tuple[int, ...]:
        ports = doc.get("ports")
        if (
            not isinstance(ports, list) or not ports or len(ports) > MAX_PROTECTED_PORTS
            or not all(is_port(p) for p in ports)
        ):
            raise self._fault(lineno, doc["name"], f"ports: {PORTS_RULE}, at most {MAX_PROTECTED_PORTS}")
        port_tuple = tuple(sorted(set(ports)))
        return self._ports.setdefault(port_tuple, port_tuple)

    def _port_bits(self, lineno: int, doc: dict[str, Any]) -> bool:
        port_bits = doc.get("port_bits", True)
        if not isinstance(port_bits, bool):
            raise self._fault(lineno, doc["name"], "port_bits: expected true or false")
        return port_bits

    def _port_range(self, lineno: int, doc: dict[str, Any]) -> PortRange:
        if "port_low" not in doc and "port_high" not in doc and "port_step" not in doc:
            return PortRange()
        try:
            return PortRange(
                self._int(lineno, doc, "port_low", 1, MAX_TCP_PORT, DEFAULT_PORT_LOW),
                self._int(lineno, doc, "port_high", 1, MAX_TCP_PORT, DEFAULT_PORT_HIGH),
                self._int(lineno, doc, "port_step", 1, 2, DEFAULT_PORT_STEP),
            )
        except ValueError as e:
            raise self._fault(lineno, doc["name"], str(e)) from None

    def _source(self, lineno: int, doc: dict[str, Any]) -> str | None:
        source = doc.get("bind_source")
        if source is None:
            return None
        try:
            if not isinstance(source, str):
                raise ValueError
            ipaddress.ip_address(source)
        except ValueError:
            raise self._fault(lineno, doc["name"], "bind_source: not an IP address") from None
        return source

    def _rotation(self, lineno: int, doc: dict[str, Any]) -> PendingRotation | None:
        present = [f for f in _ROTATION_FIELDS if f in doc]
        if not present:
            return None
        if len(present) != len(_ROTATION_FIELDS):
            missing = next(f for f in _ROTATION_FIELDS if f not in doc)
            raise self._fault(lineno, doc["name"],
                              f"{missing}: missing (a rotation needs {', '.join(_ROTATION_FIELDS)})")
        rotation = PendingRotation(self._key(lineno, doc, "next_key"),
                                   self._enrollment(lineno, doc, "next_enrollment"),
                                   self._int(lineno, doc, "rotate_until", 0, 1 << 40, 0))
        if rotation.enrollment == doc["enrollment"]:
            raise self._fault(lineno, doc["name"], "next_enrollment: must differ from enrollment")
        return rotation

    def binding(self, record: ClientRecord) -> Binding:
        """The token binding of `record` for this server (shared between records of the same shape)."""
        shape = (record.port_bits, record.port_range, record.bind_source)
        binding = self._bindings.get(shape)
        if binding is None:
            packed = ipaddress.ip_address(record.bind_source).packed if record.bind_source else None
            binding = Binding(self.server_id, record.port_bits, record.port_range, packed)
            if record.bind_source is None:  # bound clients each have their own; only shared shapes are kept
                self._bindings[shape] = binding
        return binding
