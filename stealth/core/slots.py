# Why: the token table's memory and per-packet cost are those of its hash table, so the hash table is
# hand-made: one open-addressing table (linear probing, backward-shift deletion) in two flat arrays,
# about 12 bytes per token where a dict of objects needs ~400, and a miss costs a few array reads.
# This module is that mechanism alone; what the words mean to clients is core/roster.py's and
# core/table.py's business.
#
# Layout: a slot is one 64-bit word: tag (port index 4 bits | ISN 32 | source port 16 | port-less flag 1)
# and the counter's low 11 bits (a recovery token: its slot's low 11 bits); 0 is an empty slot. A
# parallel 32-bit array names the slot's owner (a client index), with the top bit set for recovery
# tokens. A slot's home is the ISN scaled to the capacity (ISNs are uniform: they are MAC output).
import math
from array import array
from collections.abc import Callable

CBITS = 11  # counter low bits kept in a slot: 2 * MAX_WINDOW distinct counters live per client and port
CMASK = (1 << CBITS) - 1
U32 = 0xFFFFFFFF
MAX_LOAD = 0.7  # grow beyond this many slots in use; linear probing stays short below it
RECOVERY_OWNER = 1 << 31  # owner word flag: this slot holds a recovery token
Series = list[tuple[int, Callable[[int], tuple[int, int | None]]]]  # (port index, counter -> wire image)


def tag_of(port_index: int, isn: int, sport: int | None) -> int:
    """The tag of a token's wire image: a slot word without its counter bits. `sport` None: a port-less
    client's token (any source port)."""
    if sport is None:
        return (port_index << 49) | (isn << 17) | 1
    return (port_index << 49) | (isn << 17) | (sport << 1)


class Slots:
    """The open-addressing table of slot words and owners. Callers must know: a tag is stored at most
    once (the first insert of a tag keeps it), and slot indices move on every delete and resize."""

    def __init__(self, expected_tokens: int = 0) -> None:
        self.cap = 0
        self.slots = array("Q")
        self.owner = array("I")
        self.used = 0
        self._resize(max(1024, math.ceil(expected_tokens / MAX_LOAD)))

    def __len__(self) -> int:
        return self.used

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

    def _home(self, slot_word: int) -> int:
        return (((slot_word >> 28) & U32) * self.cap) >> 32

    def _find(self, tag: int) -> int:
        """The slot holding `tag`, else -1."""
        slots, cap = self.slots, self.cap
        i = (((tag >> 17) & U32) * cap) >> 32
        while True:
            s = slots[i]
            if s >> CBITS == tag:
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
        slots, cap, tag = self.slots, self.cap, word >> CBITS
        i = self._home(word)
        while True:
            s = slots[i]
            if not s:
                slots[i] = word
                self.owner[i] = owner
                self.used += 1
                return True
            if s >> CBITS == tag:
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

    def _fill(self, index: int, first: int, stop: int, series: Series) -> None:
        """Insert the tokens of counters first..stop of every (port index, wire image) in `series`, owned
        by `index` (the start-up hot loop: _put inlined)."""
        if first > stop:
            return
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
                        slots[i] = (tag << CBITS) | (counter & CMASK)
                        owner[i] = index
                        added += 1
                        break
                    if s >> CBITS == tag:  # a 2^-53 collision with another token: the first keeps it
                        break
                    i += 1
                    if i == cap:
                        i = 0
        self.used += added

    def _unfill(self, index: int, first: int, stop: int, series: Series) -> None:
        """Delete the tokens _fill(index, first, stop, series) put in (those still owned by `index`)."""
        if first > stop:
            return
        for pi, one in series:
            for counter in range(first, stop + 1):
                isn, sport = one(counter)
                tag = tag_of(pi, isn, sport)
                i = self._find(tag)
                if i >= 0 and self.owner[i] == index and self.slots[i] & CMASK == counter & CMASK:
                    self._delete(i)
