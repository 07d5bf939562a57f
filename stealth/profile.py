# Why: a client profile is the one document both ends must read identically: the server writes it at
# enrollment and stores the same fields in clients.jsonl; stealth-connect reads it. One (de)serializer
# for both keeps the token binding (server id, ports, source-port mapping, source address) in sync.
# stealth-connect reads one on every ssh login: a Record rather than a dataclass (stealth/core/record.py),
# binascii rather than base64 (which imports re), and ipaddress only for a profile bound to an address.
from __future__ import annotations

import binascii

from stealth.checks import key_of
from stealth.constants import (
    DEFAULT_PORT_HIGH,
    DEFAULT_PORT_LOW,
    DEFAULT_PORT_STEP,
    DEFAULT_WINDOW,
    MAX_PORT_STEP,
    MAX_TCP_PORT,
    MAX_WINDOW,
)
from stealth.core.record import Record, set_field
from stealth.core.secret import Secret
from stealth.core.token import LINUX_PORTS, Binding, PortRange
from stealth.errors import ConfigError
from stealth.store import Fields

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    import os
    from typing import Any

PROFILE_FORMAT = "stealth-profile-v1"


def _packed_address(text: str) -> bytes:
    import ipaddress  # only profiles bound to a source address need it

    return ipaddress.ip_address(text).packed


class Profile(Record):
    """A client profile: what both ends need to derive its tokens (server id, key, ports, window, source-port
    mapping, bound source address) and the ports that are sealed. repr hides the key."""

    __slots__ = ("bind_source", "key", "name", "port_bits", "port_range", "ports", "sealed", "server_id",
                 "window")
    _hidden = frozenset({"key"})
    name: str
    server_id: str
    key: Secret
    ports: tuple[int, ...]
    window: int
    port_bits: bool
    port_range: PortRange
    bind_source: str | None
    sealed: tuple[int, ...]  # ports where the connection must open with the session key's proof

    def __init__(self, name: str, server_id: str, key: Secret, ports: tuple[int, ...],
                 window: int = DEFAULT_WINDOW, port_bits: bool = True, port_range: PortRange = LINUX_PORTS,
                 bind_source: str | None = None, sealed: tuple[int, ...] = ()) -> None:
        set_field(self, "name", name)
        set_field(self, "server_id", server_id)
        set_field(self, "key", key)
        set_field(self, "ports", ports)
        set_field(self, "window", window)
        set_field(self, "port_bits", port_bits)
        set_field(self, "port_range", port_range)
        set_field(self, "bind_source", bind_source)
        set_field(self, "sealed", sealed)

    @property
    def binding(self) -> Binding:
        """The token Binding of this profile (ValueError for a server id outside 1..255 bytes)."""
        source = _packed_address(self.bind_source) if self.bind_source else None
        return Binding(self.server_id, self.port_bits, self.port_range, source)

    def to_doc(self) -> dict[str, Any]:
        """The profile file's table, ready for TOML: the key in base64, optional fields only when set.
        from_doc() reads it back."""
        doc: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "name": self.name,
            "server_id": self.server_id,
            "key": binascii.b2a_base64(self.key.value, newline=False).decode(),  # base64.b64encode
            "ports": list(self.ports),
            "window": self.window,
            "port_bits": self.port_bits,
            "port_low": self.port_range.low,
            "port_high": self.port_range.high,
            "port_step": self.port_range.step,
        }
        if self.bind_source:
            doc["bind_source"] = self.bind_source
        if self.sealed:
            doc["sealed"] = list(self.sealed)
        return doc

    @classmethod
    def from_doc(cls, path: str | os.PathLike[str], doc: Any, where: str = "") -> Profile:
        """Validate a parsed profile document. Raises ConfigError naming `path` (and `where`, for a table
        inside a larger document) and the field at fault."""
        f = Fields(path, doc, where)
        if f.text("format", PROFILE_FORMAT) != PROFILE_FORMAT:
            raise f.fault("format", "unsupported profile format")
        raw = key_of(f.text("key"))
        if isinstance(raw, str):
            raise f.fault("key", raw)
        source = f.text("bind_source", "") or None
        if source is not None:
            try:
                _packed_address(source)
            except ValueError:
                raise f.fault("bind_source", "not an IP address") from None
        try:
            port_range = PortRange(
                f.integer("port_low", 1, MAX_TCP_PORT, DEFAULT_PORT_LOW),
                f.integer("port_high", 1, MAX_TCP_PORT, DEFAULT_PORT_HIGH),
                f.integer("port_step", 1, MAX_PORT_STEP, DEFAULT_PORT_STEP),
            )
            profile = cls(
                name=f.text("name"),
                server_id=f.text("server_id"),
                key=Secret(raw),
                ports=f.ports("ports"),
                window=f.integer("window", 1, MAX_WINDOW, DEFAULT_WINDOW),
                port_bits=f.flag("port_bits", True),
                port_range=port_range,
                bind_source=source,
                sealed=f.ports("sealed") if "sealed" in f.table else (),
            )
            profile.binding  # noqa: B018 -- validates server id length
            if not set(profile.sealed) <= set(profile.ports):
                raise f.fault("sealed", "lists a port the profile does not cover")
        except ValueError as e:
            raise ConfigError(path, f"{where or 'profile'}: {e}") from None
        return profile
