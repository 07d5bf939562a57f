# Why: a client profile is the one document both ends must read identically: the server writes it at
# enrollment and stores the same fields in clients.jsonl; stealth-connect reads it. One (de)serializer
# for both keeps the token binding (server id, ports, source-port mapping, source address) in sync.
import base64
import binascii
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stealth.constants import DEFAULT_WINDOW, KEY_BYTES, MAX_WINDOW
from stealth.core.secret import Secret
from stealth.core.token import Binding, PortRange
from stealth.errors import ConfigError
from stealth.store import Fields

if TYPE_CHECKING:
    from stealth.core.table import ClientSpec

PROFILE_FORMAT = "stealth-profile-v1"


@dataclass(frozen=True)
class Profile:
    name: str
    server_id: str
    key: Secret = field(repr=False)
    ports: tuple[int, ...]
    window: int = DEFAULT_WINDOW
    port_bits: bool = True
    port_range: PortRange = field(default_factory=PortRange)
    bind_source: str | None = None
    sealed: tuple[int, ...] = ()  # ports where the connection must open with the session key's proof

    @property
    def binding(self) -> Binding:
        source = ipaddress.ip_address(self.bind_source).packed if self.bind_source else None
        return Binding(self.server_id, self.port_bits, self.port_range, source)

    def spec(self) -> "ClientSpec":
        from stealth.core.table import ClientSpec  # the server's table; a knock never loads it

        return ClientSpec(self.name, self.key, self.binding, self.ports)

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": PROFILE_FORMAT,
            "name": self.name,
            "server_id": self.server_id,
            "key": base64.b64encode(self.key.value).decode(),
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
    def from_doc(cls, path: Path | str, doc: Any, where: str = "") -> "Profile":
        f = Fields(path, doc, where)
        if f.text("format", PROFILE_FORMAT) != PROFILE_FORMAT:
            raise f.fault("format", "unsupported profile format")
        try:
            raw = base64.b64decode(f.text("key"), validate=True)
        except (binascii.Error, ValueError):
            raise f.fault("key", "not valid base64") from None
        if len(raw) != KEY_BYTES:
            raise f.fault("key", f"must be {KEY_BYTES} bytes")
        source = f.text("bind_source", "") or None
        if source is not None:
            try:
                ipaddress.ip_address(source)
            except ValueError:
                raise f.fault("bind_source", "not an IP address") from None
        try:
            port_range = PortRange(
                f.integer("port_low", 1, 65535, 32768), f.integer("port_high", 1, 65535, 60999),
                f.integer("port_step", 1, 2, 2),
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
