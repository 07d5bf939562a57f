# Why: a client past its window gets back in with a recovery token of the current time slot
# (core/recovery.py), so the table must hold, for every client and port, the recovery tokens of the
# slots around now, and move them all when the slot changes without stalling the packet path. This
# layer keeps them: the same slot words as counters' tokens, owner word flagged RECOVERY_OWNER, the
# slot's low bits in place of the counter's.
from collections.abc import Iterable, Iterator

from stealth.constants import RECOVERY_SLOT_SKEW
from stealth.core.recovery import live_slots, recovery_counter
from stealth.core.roster import Roster
from stealth.core.slots import CBITS, CMASK, RECOVERY_OWNER, Series, tag_of


class RecoveryTokens(Roster):
    """The roster plus every client's recovery tokens for the slots around `slot`."""

    def __init__(self, expected_tokens: int = 0) -> None:
        self.slot: int | None = None  # the recovery slot the table holds tokens around, once set
        super().__init__(expected_tokens)

    def set_slot(self, slot: int) -> None:
        """set_slot_steps() in one go; ValueError for a slot <= RECOVERY_SLOT_SKEW."""
        for _ in self.set_slot_steps(slot):
            pass

    def set_slot_steps(self, slot: int, chunk: int = 2000) -> Iterator[None]:
        """Hold every client's recovery tokens for the slots around `slot` (clients enrolled from now on
        get them at once); yields after every `chunk` clients, so a server keeps serving meanwhile.
        ValueError (at the first step) for a slot <= RECOVERY_SLOT_SKEW."""
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
        owner = index | RECOVERY_OWNER
        for pi, one in series:
            for s in live_slots(slot):
                if s not in keep:
                    isn, sport = one(recovery_counter(s))
                    self._put((tag_of(pi, isn, sport) << CBITS) | (s & CMASK), owner)

    def _unfill_recovery(self, index: int, slots: Iterable[int], series: Series | None = None) -> None:
        owner = index | RECOVERY_OWNER
        wanted = list(slots)
        for pi, one in series if series is not None else self._series(index):
            for s in wanted:
                isn, sport = one(recovery_counter(s))
                i = self._find(tag_of(pi, isn, sport))
                if i >= 0 and self.owner[i] == owner and self.slots[i] & CMASK == s & CMASK:
                    self._delete(i)
