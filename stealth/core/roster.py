# Why: a million enrolled clients must fit in well under 1 GiB beside their tokens, so clients live in
# flat per-client arrays indexed by the number the slots' owner words carry (32-byte keys in one
# bytearray, idents in another, last counters in an array, bindings and port lists shared by shape):
# ~150 bytes a client instead of a dataclass each. This layer stores and reads those arrays; ClientSpec
# and ClientState are the values callers see, built on demand.
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from stealth.core.secret import Secret
from stealth.core.slots import Series, Slots
from stealth.core.token import Binding, wire_series

KEY_BYTES_PER_CLIENT = 32
IDENT_BYTES = 8  # the server's enrollment id, stored with the client so counters can be saved by it
MAX_PORTS = 16  # port indices fit in 4 bits (the server protects at most 15 ports)


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """An enrolled client as the server sees it. `ident` is an opaque 0- or 8-byte id the server keys the
    client's durable counter by. `expires_s`: the unix time from which this key no longer opens (the old
    key of a pending rotation, core/rotation.py); the table drops it when retire_expired(now) is called at
    or after that time. None: it never expires."""

    name: str
    key: Secret = field(repr=False)
    binding: Binding
    ports: tuple[int, ...]
    ident: bytes = b""
    expires_s: float | None = None


@dataclass(frozen=True, slots=True)
class ClientState:
    """A snapshot of one enrolled client: its spec and highest accepted counter."""

    spec: ClientSpec
    last: int  # highest accepted counter; counters last+1 .. last+W are live


class _Clients(Mapping[str, ClientState]):
    """table.clients: a read-only name -> ClientState view over the flat arrays."""

    def __init__(self, roster: "Roster") -> None:
        self._t = roster

    def __getitem__(self, name: str) -> ClientState:
        return self._t.state_of(self._t.index[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._t.index)

    def __len__(self) -> int:
        return len(self._t.index)


class Roster(Slots):
    """The slots plus the enrolled clients' arrays, by client index. An index stays a client's while it
    is enrolled (or revoked and kept, see remove(revoke=True) in core/table.py); a freed one is reused."""

    def __init__(self, expected_tokens: int = 0) -> None:
        self.port_index: dict[int, int] = {}  # protected port -> the 4-bit port index in slot tags
        self.portless_clients = 0
        self.index: dict[str, int] = {}  # enrolled name -> client index
        self._names: list[str | None] = []
        self._keys = bytearray()
        self._idents = bytearray()
        self._last = array("Q")
        self._rslot = array("Q")  # per client: the slot its recovery tokens are centred on (0: none)
        self._shape = array("I")
        self._shapes: list[tuple[Binding, tuple[int, ...]]] = []
        self._shape_ids: dict[tuple[Binding, tuple[int, ...]], int] = {}
        self._free: list[int] = []
        self._expires: dict[int, float] = {}  # client index -> expires_s, for the few clients with one
        self._revoked: set[int] = set()  # revoked keys whose tokens stay (remove(revoke=True))
        self._revoked_ident: dict[bytes, int] = {}  # their idents (those that have one) -> index
        super().__init__(expected_tokens)

    @property
    def clients(self) -> Mapping[str, ClientState]:
        """Read-only name -> ClientState view of every enrolled client."""
        return _Clients(self)

    def name_of(self, index: int) -> str:
        """The name of the client at `index` (also of a revoked key kept behind)."""
        name = self._names[index]
        assert name is not None
        return name

    def last_of(self, index: int) -> int:
        """The highest accepted counter of the client at `index`."""
        return self._last[index]

    def binding_of(self, index: int) -> Binding:
        """The Binding of the client at `index` (the gate checks its source)."""
        return self._shapes[self._shape[index]][0]

    def ident_of(self, name: str) -> bytes:
        """The client's 8-byte enrollment id (zeros when it has none): what its counter is persisted
        under. KeyError for a name not enrolled."""
        i = self.index[name] * IDENT_BYTES
        return bytes(self._idents[i : i + IDENT_BYTES])

    def spec_of(self, index: int) -> ClientSpec:
        """The ClientSpec of the client at `index`, rebuilt from the arrays (a revoked key's: zero key)."""
        binding, ports = self._shapes[self._shape[index]]
        k = index * KEY_BYTES_PER_CLIENT
        i = index * IDENT_BYTES
        ident = bytes(self._idents[i : i + IDENT_BYTES])
        return ClientSpec(
            self.name_of(index), Secret(bytes(self._keys[k : k + KEY_BYTES_PER_CLIENT])), binding, ports,
            b"" if ident == bytes(IDENT_BYTES) else ident, self._expires.get(index),
        )

    def state_of(self, index: int) -> ClientState:
        """spec_of(index) with the client's highest accepted counter."""
        return ClientState(self.spec_of(index), self._last[index])

    def counters(self) -> Iterator[tuple[str, int]]:
        """(ident in hex, last accepted counter) of every enrolled client with an ident and a counter."""
        for index in self.index.values():
            last = self._last[index]
            i = index * IDENT_BYTES
            if last and any(self._idents[i : i + IDENT_BYTES]):
                yield self._idents[i : i + IDENT_BYTES].hex(), last

    def is_revoked(self, index: int) -> bool:
        """Whether entry `index` is a revoked key's leftover token (see remove(revoke=True))."""
        return index in self._revoked

    def _same(self, index: int, spec: ClientSpec) -> bool:
        k = index * KEY_BYTES_PER_CLIENT
        return (
            self._keys[k : k + KEY_BYTES_PER_CLIENT] == spec.key.value
            and self._shapes[self._shape[index]] == (spec.binding, spec.ports)
            and self._same_ident(index, spec)
            and self._expires.get(index) == spec.expires_s
        )

    def _same_ident(self, index: int, spec: ClientSpec) -> bool:
        """Whether table entry `index` counts the same knocks as `spec`: the same enrollment id, so the
        same key's counter sequence (a new key comes with a new id and starts its own)."""
        i = index * IDENT_BYTES
        return self._idents[i : i + IDENT_BYTES] == spec.ident.ljust(IDENT_BYTES, b"\0")

    def _series(self, index: int) -> Series:
        binding, ports = self._shapes[self._shape[index]]
        k = index * KEY_BYTES_PER_CLIENT
        key = Secret(bytes(self._keys[k : k + KEY_BYTES_PER_CLIENT]))
        return [(self.port_index[p], wire_series(key, binding, p)) for p in ports]

    def _enroll(self, spec: ClientSpec, last: int) -> int:
        """Store `spec` at `last` in the arrays (a freed index first) and register its ports; its index.
        Puts no token in the slots. ValueError past MAX_PORTS distinct ports (nothing stored then)."""
        for p in spec.ports:
            if p not in self.port_index:
                if len(self.port_index) >= MAX_PORTS:
                    raise ValueError(f"at most {MAX_PORTS} distinct protected ports")
                self.port_index[p] = len(self.port_index)
        shape_key = (spec.binding, spec.ports)
        shape = self._shape_ids.get(shape_key)
        if shape is None:
            shape = self._shape_ids[shape_key] = len(self._shapes)
            self._shapes.append(shape_key)
        ident = spec.ident.ljust(IDENT_BYTES, b"\0")
        if self._free:
            index = self._free.pop()
            self._names[index] = spec.name
            k = index * KEY_BYTES_PER_CLIENT
            self._keys[k : k + KEY_BYTES_PER_CLIENT] = spec.key.value
            self._idents[index * IDENT_BYTES : (index + 1) * IDENT_BYTES] = ident
            self._last[index] = last
            self._rslot[index] = 0
            self._shape[index] = shape
        else:
            index = len(self._names)
            self._names.append(spec.name)
            self._keys += spec.key.value
            self._idents += ident
            self._last.append(last)
            self._rslot.append(0)
            self._shape.append(shape)
        self.index[spec.name] = index
        if spec.expires_s is not None:
            self._expires[index] = spec.expires_s
        if not spec.binding.port_bits:
            self.portless_clients += 1
        return index

    def _release(self, index: int, keep: bool) -> None:
        """Wipe the key of the client at `index` (already out of `index` and the slots, unless `keep`).
        `keep`: name, ident and counter stay, as a revoked key's, to name it and find its tokens again."""
        if not self._shapes[self._shape[index]][0].port_bits:
            self.portless_clients -= 1
        k = index * KEY_BYTES_PER_CLIENT
        self._keys[k : k + KEY_BYTES_PER_CLIENT] = bytes(KEY_BYTES_PER_CLIENT)  # no stale key stays behind
        self._expires.pop(index, None)
        if keep:
            self._revoked.add(index)
            ident = bytes(self._idents[index * IDENT_BYTES : (index + 1) * IDENT_BYTES])
            if any(ident):
                self._revoked_ident[ident] = index
            return
        self._free_index(index)

    def _free_index(self, index: int) -> None:
        self._names[index] = None
        self._last[index] = 0
        self._free.append(index)
