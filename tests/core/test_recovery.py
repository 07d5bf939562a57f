# Why: the recovery arithmetic is protocol (docs/PROTOCOL.md 4.5): the slot of a time, the recovery
# counter of a slot (never a normal counter), the base it moves a client to (above every counter the
# client could have used since the previous slot), and the slots a server holds. Pinned on the published
# recovery vector.
import json
from pathlib import Path

from stealth.constants import RECOVERY_BASE_SHIFT, RECOVERY_COUNTER_FLAG, RECOVERY_SLOT_SECONDS
from stealth.core.recovery import live_slots, recovery_base, recovery_counter, slot_of

VECTORS = json.loads((Path(__file__).parent.parent / "vectors.json").read_text())["vectors"]


def test_the_published_recovery_vector() -> None:
    (v,) = [v for v in VECTORS if v["name"].startswith("recovery token of slot 2941000")]
    assert slot_of(1764600000) == slot_of(1764600599) == 2941000 != slot_of(1764600600)
    assert recovery_counter(2941000) == v["counter"]
    assert recovery_base(2941000) == 2941000 * 2**24 == 49341792256000


def test_recovery_counters_are_never_normal_counters_and_bases_grow_by_a_slot() -> None:
    for slot in (1, 2941000, 2**39 - 1):
        assert recovery_counter(slot) >= RECOVERY_COUNTER_FLAG > recovery_base(slot)
        assert recovery_base(slot + 1) - recovery_base(slot) == 1 << RECOVERY_BASE_SHIFT


def test_a_server_holds_its_slot_and_one_either_side() -> None:
    assert list(live_slots(100)) == [99, 100, 101]
    assert RECOVERY_SLOT_SECONDS == 600  # the clock-skew bound in the docs: at least 10 minutes
