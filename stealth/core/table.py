# Why: per-packet work must be one hash lookup, not a loop of MACs over a window (bounded work per junk
# SYN: docs/ARCHITECTURE.md, a packet's path), and a million enrolled clients must fit in well under
# 1 GiB. The table holds, for every enrolled client and protected port, the wire image (ISN, source port)
# of its next W counters plus its last W spent ones, so replays are recognised as such, and the recovery
# tokens of the current time slot and its neighbours (core/recovery.py). It is the only holder of replay
# state: a counter at or below a client's accepted counter never passes again. Retransmissions of an
# accepted SYN never get here: conntrack's mark carries them past the queue.
#
# One class per concept, stacked so the per-packet path reads plain instance attributes: Slots (the hash
# table of slot words, core/slots.py) < Roster (the per-client arrays, core/roster.py) < RecoveryTokens
# (core/recovery_tokens.py) < TokenTable (windows of counters, enrolment, key rotation and sync). Spent
# is not stored: a counter is spent when it is at or below the client's last accepted one.
from collections.abc import Iterable, Iterator
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
from stealth.core.recovery_tokens import RecoveryTokens
from stealth.core.roster import IDENT_BYTES, KEY_BYTES_PER_CLIENT, ClientSpec, ClientState
from stealth.core.rotation import predecessor_name, successor_name
from stealth.core.slots import CBITS, CMASK, RECOVERY_OWNER, U32
from stealth.core.token import wire_series

__all__ = ["ClientSpec", "ClientState", "Entry", "TokenTable"]

assert 2 * MAX_WINDOW <= 1 << CBITS


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
        """The client's spec and accepted counter now, built on demand from the table's arrays."""
        return self.table.state_of(self.index)

    @property
    def new_last(self) -> int:
        """The client's highest accepted counter once this token is accepted."""
        return recovery_base(self.counter & ~RECOVERY_COUNTER_FLAG) if self.recovery else self.counter

    @property
    def spent(self) -> bool:
        """True when this token's counter (a recovery token: its base) is at or below the client's
        accepted one: a replay."""
        return self.new_last <= self.table.last_of(self.index)

    @property
    def name(self) -> str:
        """The owning client's name."""
        return self.table.name_of(self.index)


class TokenTable(RecoveryTokens):
    """Live and recently spent tokens of all clients, keyed by their wire image. ValueError for a window
    outside 1..MAX_WINDOW."""

    def __init__(self, window: int = DEFAULT_WINDOW, expected_tokens: int = 0) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}")
        self.window = window
        self._pairs = 0  # clients with both keys of a rotation enrolled (client_count counts them once)
        super().__init__(expected_tokens)

    def tokens_for(self, clients: int, ports_per_client: int) -> int:
        """Slots `clients` clients need at most: W live plus W spent counters per protected port, and the
        recovery tokens of 2 * RECOVERY_SLOT_SKEW + 1 slots."""
        return clients * ports_per_client * (2 * self.window + 2 * RECOVERY_SLOT_SKEW + 1)

    # --- per packet --------------------------------------------------------------------------------
    def lookup(self, dport: int, isn: int, sport: int) -> Entry | None:
        """The entry whose wire image is (dport, isn, sport), else None: one probe (a second, port-less
        one when such clients exist). Changes nothing; the caller judges spent entries."""
        pi = self.port_index.get(dport)
        if pi is None:
            return None
        base = (pi << 49) | ((isn & U32) << 17)
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
        low = self.slots[i] & CMASK
        if index & RECOVERY_OWNER:
            index &= ~RECOVERY_OWNER
            first = self._rslot[index] - RECOVERY_SLOT_SKEW  # its slots: first .. first + 2 * skew
            return Entry(self, index, recovery_counter(first + ((low - first) & CMASK)), dport, tag, True)
        last = self._last[index]
        # the slot keeps the counter's low bits; the counter is the one within last-W+1 .. last+W
        counter = last - self.window + 1 + ((low - (last - self.window + 1)) & CMASK)
        return Entry(self, index, counter, dport, tag)

    def consume(self, entry: Entry) -> int:
        """Spend entry's counter (a recovery token: every counter up to its base) and every lower one;
        refill the window. Returns the new last counter."""
        last = entry.new_last
        assert last > self._last[entry.index]
        self._advance(entry.index, last)
        return last

    # --- enrolment -----------------------------------------------------------------------------------
    def add(self, spec: ClientSpec, last: int) -> None:
        """Enroll (or re-enroll) a client whose highest accepted counter is `last`. ValueError for a key
        not of 32 bytes, an ident not of 0 or 8, a counter beyond 64 bits, too many clients or ports."""
        if len(spec.key.value) != KEY_BYTES_PER_CLIENT or len(spec.ident) not in (0, IDENT_BYTES):
            raise ValueError("a client key is 32 bytes and an ident 0 or 8 bytes")
        if len(self._names) >= RECOVERY_OWNER:
            raise ValueError("too many clients")
        if not 0 <= last <= COUNTER_MAX:
            raise ValueError("counter out of 64-bit range")
        self.remove(spec.name)
        if self._revoked:
            self._purge_revoked(spec)
        index = self._enroll(spec, last)
        self._pairs += self._paired(spec.name)
        self._fill(index, max(1, last - self.window + 1), min(last + self.window, COUNTER_MAX),
                   self._series(index))
        if self.slot is not None:
            self._move_recovery(index, self.slot)
        if last:
            self._retire_predecessor(index)

    def remove(self, name: str, revoke: bool = False) -> None:
        """Take a client out of the table (an unknown name is ignored); its key bytes are zeroed.
        `revoke`: its window's tokens stay behind, without the key, as a revoked key's (is_revoked), so a
        later knock with one is told from junk and logged; at most MAX_REVOKED_KEYS keys at a time are
        kept so (each costs what the client cost), until the server restarts."""
        if name not in self.index:
            return
        self._pairs -= self._paired(name)
        index = self.index.pop(name)
        last = self._last[index]
        keep = revoke and len(self._revoked) < MAX_REVOKED_KEYS
        if not keep:
            self._unfill(index, max(1, last - self.window + 1), min(last + self.window, COUNTER_MAX),
                         self._series(index))
        if self._rslot[index]:
            self._unfill_recovery(index, live_slots(self._rslot[index]))
            self._rslot[index] = 0
        self._release(index, keep)

    @property
    def client_count(self) -> int:
        """Enrolled clients: names in the table, a client in a key rotation (two keys) counted once."""
        return len(self.index) - self._pairs

    def _paired(self, name: str) -> int:
        """1 if `name`'s other key of a rotation is in the table too, else 0."""
        other = predecessor_name(name)
        return int((other if other is not None else successor_name(name)) in self.index)

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
        self._free_index(tomb)

    def advance(self, name: str, last: int) -> None:
        """Move a client's accepted counter forward to `last` (never back): learned from another worker
        or an admin resync. Counters up to `last` become spent. KeyError for a name not enrolled."""
        index = self.index[name]
        if last > self._last[index]:
            self._advance(index, min(last, COUNTER_MAX))

    def _advance(self, index: int, last: int) -> None:
        old, w = self._last[index], self.window
        self._last[index] = last
        series = self._series(index)
        self._unfill(index, max(1, old - w + 1), min(old + w, last - w), series)
        self._fill(index, max(old + w + 1, last - w + 1, 1), min(last + w, COUNTER_MAX), series)
        self._retire_predecessor(index)

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

    def sync_steps(self, clients: Iterable[tuple[ClientSpec, int]], chunk: int = 2000) -> Iterator[None]:
        """Make the enrolled set equal `clients` (spec, stored last counter), streamed once, in steps:
        yields after every `chunk` clients, so a server can keep answering packets while a million
        clients reload. Each client is either wholly old or wholly new between steps; clients missing
        from `clients` are removed (revoked) at the end. Known clients keep their in-memory counter if
        it is higher; a changed spec of the same key (same ident) re-enrolls from the higher one, a new
        key from its own. A key whose successor was used is left out. A successor must come before its
        predecessor (so a used one retires it first). ValueError for a name given twice."""
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
