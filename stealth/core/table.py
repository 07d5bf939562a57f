# Why: per-packet work must be one hash lookup, not a loop of MACs over a window (DESIGN §2.10), and a
# million enrolled clients must fit in well under 1 GiB. The table holds, for every enrolled client and
# protected port, the wire image (ISN, source port) of its next W counters plus its last W spent ones, so
# replays are recognised as such, and the recovery tokens of the current time slot and its neighbours
# (core/recovery.py). It is the only holder of replay state: a counter at or below a client's accepted
# counter never passes again. Retransmissions of an accepted SYN never get here: conntrack's mark carries
# them past the queue.
#
# Layout: one open-addressing hash table (linear probing, backward-shift deletion) in two flat arrays.
# A slot is one 64-bit word: tag (port index 4 bits | ISN 32 | source port 16 | port-less flag 1) and the
# counter's low 11 bits (a recovery token: its slot's low 11 bits); a parallel 32-bit array names the
# client, with the top bit set for recovery tokens. Spent is not stored: a counter is spent
# when it is at or below the client's last accepted one. Clients live in flat arrays too (32-byte keys in
# one bytearray, last counters in an array), so the table costs about 12 bytes per token slot and ~150
# bytes per client, instead of the ~400 bytes per token a dict of objects needs. Python-level reads of
# array('Q') items are as cheap as dict probes, so a miss costs a few array reads.
import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from stealth.constants import (
    COUNTER_MAX,
    DEFAULT_WINDOW,
    MAX_REVOKED_KEYS,
    MAX_WINDOW,
    RECOVERY_COUNTER_FLAG,
    RECOVERY_SLOT_SKEW,
)
from stealth.core.recovery import live_slots, recovery_base, recovery_counter
from stealth.core.rotation import predecessor_name, successor_name
from stealth.core.secret import Secret
from stealth.core.token import Binding, wire_series

KEY_BYTES_PER_CLIENT = 32
IDENT_BYTES = 8  # the server's enrollment id, stored with the client so counters can be saved by it
MAX_PORTS = 16  # port indices fit in 4 bits (the server protects at most 15 ports)
_CBITS = 11  # counter low bits kept in a slot: 2 * MAX_WINDOW distinct counters live per client and port
_CMASK = (1 << _CBITS) - 1
_U32 = 0xFFFFFFFF
MAX_LOAD = 0.7  # grow beyond this many slots in use; linear probing stays short below it
_FREE = 0xFFFFFFFF
_RECOVERY_OWNER = 1 << 31  # owner word flag: this slot holds a recovery token
Series = list[tuple[int, Callable[[int], tuple[int, int | None]]]]  # (port index, counter -> wire image)

assert 2 * MAX_WINDOW <= 1 << _CBITS


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


@dataclass(slots=True)
class Entry:
    """One (client, counter, port) token found in the table. The session key is derived only on accept.
    A recovery token's counter is recovery_counter(slot); accepting it moves the client to `new_last`."""

    table: "TokenTable" = field(repr=False)
    index: int
    counter: int
    dport: int
    tag: int
    recovery: bool = False

    @property
    def client(self) -> ClientState:
        return self.table.state_of(self.index)

    @property
    def new_last(self) -> int:
        """The client's highest accepted counter once this token is accepted."""
        return recovery_base(self.counter & ~RECOVERY_COUNTER_FLAG) if self.recovery else self.counter

    @property
    def spent(self) -> bool:
        return self.new_last <= self.table.last_of(self.index)

    @property
    def name(self) -> str:
        return self.table.name_of(self.index)


def _tag(port_index: int, isn: int, sport: int | None) -> int:
    if sport is None:
        return (port_index << 49) | (isn << 17) | 1
    return (port_index << 49) | (isn << 17) | (sport << 1)


class _Clients(Mapping[str, ClientState]):
    """table.clients: a read-only name -> ClientState view over the flat arrays."""

    def __init__(self, table: "TokenTable") -> None:
        self._t = table

    def __getitem__(self, name: str) -> ClientState:
        return self._t.state_of(self._t.index[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._t.index)

    def __len__(self) -> int:
        return len(self._t.index)


class TokenTable:
    """Live and recently spent tokens of all clients, keyed by their wire image."""

    def __init__(self, window: int = DEFAULT_WINDOW, expected_tokens: int = 0) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}")
        self.window = window
        self.cap = 0
        self.slots = array("Q")
        self.owner = array("I")
        self.used = 0
        self.slot: int | None = None  # the recovery slot the table holds tokens around, once set
        self.port_index: dict[int, int] = {}
        self.portless_clients = 0
        # clients, by index
        self.index: dict[str, int] = {}
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
        self._resize(max(1024, math.ceil(expected_tokens / MAX_LOAD)))

    # --- sizes -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.used

    def tokens_for(self, clients: int, ports_per_client: int) -> int:
        """Slots `clients` clients need at most: W live plus W spent counters per protected port, and the
        recovery tokens of 2 * RECOVERY_SLOT_SKEW + 1 slots."""
        return clients * ports_per_client * (2 * self.window + 2 * RECOVERY_SLOT_SKEW + 1)

    def reserve(self, tokens: int) -> None:
        """Size the table for `tokens` entries up front (growing later re-inserts every entry)."""
        need = math.ceil(tokens / MAX_LOAD)
        if need > self.cap:
            self._resize(need)

    def _resize(self, cap: int) -> None:
        old_slots, old_owner = self.slots, self.owner
        self.cap = cap
        self.slots = array("Q", bytes(8 * cap))
        self.owner = array("I", bytes(4 * cap))
        self.used = 0
        for i, s in enumerate(old_slots):
            if s:
                self._put(s, old_owner[i])

    # --- the hash table ----------------------------------------------------------------------------
    def _home(self, slot_word: int) -> int:
        return (((slot_word >> 28) & _U32) * self.cap) >> 32

    def _find(self, tag: int) -> int:
        slots, cap = self.slots, self.cap
        i = (((tag >> 17) & _U32) * cap) >> 32
        while True:
            s = slots[i]
            if s >> _CBITS == tag:
                return i
            if not s:
                return -1
            i += 1
            if i == cap:
                i = 0

    def _put(self, word: int, owner: int) -> bool:
        """Insert unless the tag is taken (a 2^-53 collision with another token: the first keeps it)."""
        if (self.used + 1) > MAX_LOAD * self.cap:
            self._resize(2 * self.cap)
        slots, cap, tag = self.slots, self.cap, word >> _CBITS
        i = self._home(word)
        while True:
            s = slots[i]
            if not s:
                slots[i] = word
                self.owner[i] = owner
                self.used += 1
                return True
            if s >> _CBITS == tag:
                return False
            i += 1
            if i == cap:
                i = 0

    def _delete(self, i: int) -> None:
        """Empty slot i and shift later members of its probe run back (no tombstones)."""
        slots, owner, cap = self.slots, self.owner, self.cap
        j = i
        while True:
            j += 1
            if j == cap:
                j = 0
            s = slots[j]
            if not s:
                break
            home = self._home(s)
            # move s into the hole at i unless its home lies cyclically in (i, j]
            if (home <= i < j) or (i < j < home) or (j < home <= i):
                slots[i] = s
                owner[i] = owner[j]
                i = j
        slots[i] = 0
        owner[i] = 0
        self.used -= 1

    # --- per packet --------------------------------------------------------------------------------
    def lookup(self, dport: int, isn: int, sport: int) -> Entry | None:
        pi = self.port_index.get(dport)
        if pi is None:
            return None
        base = (pi << 49) | ((isn & _U32) << 17)
        tag = base | ((sport & 0xFFFF) << 1)
        i = self._find(tag)
        if i < 0 and self.portless_clients:
            tag = base | 1
            i = self._find(tag)
        if i < 0:
            return None
        return self._entry(i, tag, dport)

    def _entry(self, i: int, tag: int, dport: int) -> Entry:
        index = self.owner[i]
        low = self.slots[i] & _CMASK
        if index & _RECOVERY_OWNER:
            index &= ~_RECOVERY_OWNER
            first = self._rslot[index] - RECOVERY_SLOT_SKEW  # its slots: first .. first + 2 * skew
            return Entry(self, index, recovery_counter(first + ((low - first) & _CMASK)), dport, tag, True)
        last = self._last[index]
        # the slot keeps the counter's low bits; the counter is the one within last-W+1 .. last+W
        counter = last - self.window + 1 + ((low - (last - self.window + 1)) & _CMASK)
        return Entry(self, index, counter, dport, tag)

    def consume(self, entry: Entry) -> int:
        """Spend entry's counter (a recovery token: every counter up to its base) and every lower one;
        refill the window. Returns the new last counter."""
        last = entry.new_last
        assert last > self._last[entry.index]
        self._advance(entry.index, last)
        return last

    # --- clients -----------------------------------------------------------------------------------
    @property
    def clients(self) -> Mapping[str, ClientState]:
        return _Clients(self)

    def name_of(self, index: int) -> str:
        name = self._names[index]
        assert name is not None
        return name

    def last_of(self, index: int) -> int:
        return self._last[index]

    def binding_of(self, index: int) -> Binding:
        return self._shapes[self._shape[index]][0]

    def ident_of(self, name: str) -> bytes:
        i = self.index[name] * IDENT_BYTES
        return bytes(self._idents[i : i + IDENT_BYTES])

    def spec_of(self, index: int) -> ClientSpec:
        binding, ports = self._shapes[self._shape[index]]
        k = index * KEY_BYTES_PER_CLIENT
        i = index * IDENT_BYTES
        ident = bytes(self._idents[i : i + IDENT_BYTES])
        return ClientSpec(
            self.name_of(index), Secret(bytes(self._keys[k : k + KEY_BYTES_PER_CLIENT])), binding, ports,
            b"" if ident == bytes(IDENT_BYTES) else ident, self._expires.get(index),
        )

    def state_of(self, index: int) -> ClientState:
        return ClientState(self.spec_of(index), self._last[index])

    def counters(self) -> Iterator[tuple[str, int]]:
        """(ident in hex, last accepted counter) of every enrolled client with an ident and a counter."""
        for index in self.index.values():
            last = self._last[index]
            i = index * IDENT_BYTES
            if last and any(self._idents[i : i + IDENT_BYTES]):
                yield self._idents[i : i + IDENT_BYTES].hex(), last

    def items(self) -> Iterator[tuple[int, Entry]]:
        """Every token in the table as (tag, Entry): for tests and diagnostics."""
        for i, s in enumerate(self.slots):
            if s:
                tag = s >> _CBITS
                dport = next(p for p, pi in self.port_index.items() if pi == tag >> 49)
                yield tag, self._entry(i, tag, dport)

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

    def add(self, spec: ClientSpec, last: int) -> None:
        """Enroll (or re-enroll) a client whose highest accepted counter is `last`."""
        if len(spec.key.value) != KEY_BYTES_PER_CLIENT or len(spec.ident) not in (0, IDENT_BYTES):
            raise ValueError("a client key is 32 bytes and an ident 0 or 8 bytes")
        if len(self._names) >= _RECOVERY_OWNER:
            raise ValueError("too many clients")
        if not 0 <= last <= COUNTER_MAX:
            raise ValueError("counter out of 64-bit range")
        self.remove(spec.name)
        if self._revoked:
            self._purge_revoked(spec)
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
        self._fill(index, max(1, last - self.window + 1), min(last + self.window, COUNTER_MAX))
        if self.slot is not None:
            self._move_recovery(index, self.slot)
        if last:
            self._retire_predecessor(index)

    def remove(self, name: str, revoke: bool = False) -> None:
        """Take a client out of the table (an unknown name is ignored); its key bytes are zeroed.
        `revoke`: its window's tokens stay behind, without the key, as a revoked key's (is_revoked), so a
        later knock with one is told from junk and logged; at most MAX_REVOKED_KEYS keys at a time are
        kept so (each costs what the client cost), until the server restarts."""
        index = self.index.pop(name, None)
        if index is None:
            return
        last = self._last[index]
        keep = revoke and len(self._revoked) < MAX_REVOKED_KEYS
        if not keep:
            self._unfill(index, max(1, last - self.window + 1), min(last + self.window, COUNTER_MAX))
        if self._rslot[index]:
            self._unfill_recovery(index, live_slots(self._rslot[index]))
            self._rslot[index] = 0
        if not self._shapes[self._shape[index]][0].port_bits:
            self.portless_clients -= 1
        k = index * KEY_BYTES_PER_CLIENT
        self._keys[k : k + KEY_BYTES_PER_CLIENT] = bytes(KEY_BYTES_PER_CLIENT)  # no stale key stays behind
        self._expires.pop(index, None)
        if keep:  # name, ident and counter stay, to name the key and to find its tokens again
            self._revoked.add(index)
            ident = bytes(self._idents[index * IDENT_BYTES : (index + 1) * IDENT_BYTES])
            if any(ident):
                self._revoked_ident[ident] = index
            return
        self._names[index] = None
        self._last[index] = 0
        self._free.append(index)

    def _purge_revoked(self, spec: ClientSpec) -> None:
        """Before `spec` is enrolled: drop what a revoked key of the same ident left behind (a revoked
        record restored by the admin), whose tokens would otherwise shadow the live ones."""
        tomb = self._revoked_ident.pop(spec.ident, None) if spec.ident else None
        if tomb is None:
            return
        self._revoked.discard(tomb)
        last, w = self._last[tomb], self.window
        series = [(self.port_index[p], wire_series(spec.key, spec.binding, p))
                  for p in spec.ports if p in self.port_index]
        self._unfill(tomb, max(1, last - w + 1), min(last + w, COUNTER_MAX), series)
        self._names[tomb] = None
        self._last[tomb] = 0
        self._free.append(tomb)

    def is_revoked(self, index: int) -> bool:
        """Whether entry `index` is a revoked key's leftover token (see remove(revoke=True))."""
        return index in self._revoked

    # --- key rotation (core/rotation.py) -----------------------------------------------------------
    def retire_expired(self, now_s: float) -> list[str]:
        """Remove every client whose spec expires at or before `now_s` (unix seconds); their names."""
        gone = [self.name_of(i) for i, t in self._expires.items() if t <= now_s]
        for name in gone:
            self.remove(name, revoke=True)
        return gone

    def superseded(self, name: str) -> bool:
        """Whether `name`'s key was replaced: its successor is enrolled and has been used."""
        index = self.index.get(successor_name(name))
        return index is not None and self._last[index] > 0

    def _retire_predecessor(self, index: int) -> None:
        """A successor's first accepted counter ends the key it replaces."""
        old = predecessor_name(self.name_of(index))
        if old is not None and old in self.index:
            self.remove(old, revoke=True)

    def _known_last(self, spec: ClientSpec) -> int:
        """The counter the table already holds for spec's key: under its name, or (a rotation folded
        into the record) under its successor's name, which is then removed to make room for it."""
        index = self.index.get(spec.name)
        if index is not None and self._same_ident(index, spec):
            return self._last[index]
        index = self.index.get(successor_name(spec.name))
        if index is not None and self._same_ident(index, spec):
            last = self._last[index]
            self.remove(successor_name(spec.name))
            return last
        return 0

    def advance(self, name: str, last: int) -> None:
        """Move a client's accepted counter forward to `last` (never back): learned from another worker
        or an admin resync. Counters up to `last` become spent."""
        index = self.index[name]
        if last > self._last[index]:
            self._advance(index, min(last, COUNTER_MAX))

    def sync(self, clients: Iterable[tuple[ClientSpec, int]]) -> None:
        """Make the enrolled set equal `clients` (spec, stored last counter), streamed once. Known clients
        keep their in-memory counter if it is higher; a changed spec of the same key (same ident)
        re-enrolls from the higher one, a new key from its own. A key whose successor was used is left
        out. A successor must come before its predecessor (so a used one retires it first)."""
        for _ in self.sync_steps(clients):
            pass

    def sync_steps(self, clients: Iterable[tuple[ClientSpec, int]], chunk: int = 2000) -> Iterator[None]:
        """sync() in steps: yields after every `chunk` clients, so a server can keep answering packets
        while a million clients reload. Each client is either wholly old or wholly new between steps;
        clients missing from `clients` are removed at the end."""
        seen = bytearray(len(self._names))
        n = 0
        for spec, last in clients:
            if spec.expires_s is not None and self.superseded(spec.name):
                continue  # an old key whose successor was used: removed at the end (not marked seen)
            old = predecessor_name(spec.name)
            old_index = self.index.get(old) if old is not None else None
            index = self.index.get(spec.name)
            if index is not None and self._same(index, spec):
                if last > self._last[index]:
                    self._advance(index, last)
            else:
                self.add(spec, max(last, self._known_last(spec)))
                index = self.index[spec.name]
            if old_index is not None and old not in self.index and old_index < len(seen):
                seen[old_index] = 0  # retired just now by its used successor: its index may be reused
            if index >= len(seen):
                seen.extend(bytes(index + 1 - len(seen)))
            elif seen[index]:
                raise ValueError(f"client {spec.name!r} is enrolled twice")
            seen[index] = 1
            n += 1
            if n % chunk == 0:
                yield
        for name, index in list(self.index.items()):
            if index >= len(seen) or not seen[index]:
                self.remove(name, revoke=True)

    # --- recovery tokens ------------------------------------------------------------------------------
    def set_slot(self, slot: int) -> None:
        for _ in self.set_slot_steps(slot):
            pass

    def set_slot_steps(self, slot: int, chunk: int = 2000) -> Iterator[None]:
        """Hold every client's recovery tokens for the slots around `slot` (clients enrolled from now on
        get them at once); yields after every `chunk` clients, so a server keeps serving meanwhile."""
        if slot <= RECOVERY_SLOT_SKEW:
            raise ValueError("slot out of range")
        self.slot = slot
        for n, index in enumerate(list(self.index.values()), start=1):
            if self._rslot[index] != slot:
                self._move_recovery(index, slot)
            if n % chunk == 0:
                yield

    def _move_recovery(self, index: int, slot: int) -> None:
        old = self._rslot[index]
        keep = set(live_slots(old)) & set(live_slots(slot)) if old else set()
        series = self._series(index)
        if old:
            self._unfill_recovery(index, [s for s in live_slots(old) if s not in keep], series)
        self._rslot[index] = slot
        owner = index | _RECOVERY_OWNER
        for pi, one in series:
            for s in live_slots(slot):
                if s not in keep:
                    isn, sport = one(recovery_counter(s))
                    self._put((_tag(pi, isn, sport) << _CBITS) | (s & _CMASK), owner)

    def _unfill_recovery(self, index: int, slots: Iterable[int], series: Series | None = None) -> None:
        owner = index | _RECOVERY_OWNER
        wanted = list(slots)
        for pi, one in series if series is not None else self._series(index):
            for s in wanted:
                isn, sport = one(recovery_counter(s))
                i = self._find(_tag(pi, isn, sport))
                if i >= 0 and self.owner[i] == owner and self.slots[i] & _CMASK == s & _CMASK:
                    self._delete(i)

    # --- filling and emptying a client's window ------------------------------------------------------
    def _advance(self, index: int, last: int) -> None:
        old, w = self._last[index], self.window
        self._last[index] = last
        series = self._series(index)
        self._unfill(index, max(1, old - w + 1), min(old + w, last - w), series)
        self._fill(index, max(old + w + 1, last - w + 1, 1), min(last + w, COUNTER_MAX), series)
        self._retire_predecessor(index)

    def _series(self, index: int) -> Series:
        binding, ports = self._shapes[self._shape[index]]
        k = index * KEY_BYTES_PER_CLIENT
        key = Secret(bytes(self._keys[k : k + KEY_BYTES_PER_CLIENT]))
        return [(self.port_index[p], wire_series(key, binding, p)) for p in ports]

    def _fill(self, index: int, first: int, stop: int,
              series: Series | None = None) -> None:
        """Insert the tokens of counters first..stop (the start-up hot loop: _put inlined)."""
        if first > stop:
            return
        series = series if series is not None else self._series(index)
        need = self.used + (stop - first + 1) * len(series)
        if need > MAX_LOAD * self.cap:
            self._resize(max(2 * self.cap, math.ceil(need / MAX_LOAD)))
        slots, owner, cap = self.slots, self.owner, self.cap
        added = 0
        for pi, one in series:
            high = pi << 49
            for counter in range(first, stop + 1):
                isn, sport = one(counter)
                tag = high | (isn << 17) | (1 if sport is None else sport << 1)
                i = (isn * cap) >> 32
                while True:
                    s = slots[i]
                    if not s:
                        slots[i] = (tag << _CBITS) | (counter & _CMASK)
                        owner[i] = index
                        added += 1
                        break
                    if s >> _CBITS == tag:  # a 2^-53 collision with another token: the first keeps it
                        break
                    i += 1
                    if i == cap:
                        i = 0
        self.used += added

    def _unfill(self, index: int, first: int, stop: int,
                series: Series | None = None) -> None:
        if first > stop:
            return
        for pi, one in series if series is not None else self._series(index):
            for counter in range(first, stop + 1):
                isn, sport = one(counter)
                tag = _tag(pi, isn, sport)
                i = self._find(tag)
                if i >= 0 and self.owner[i] == index and self.slots[i] & _CMASK == counter & _CMASK:
                    self._delete(i)
