# Why: a client must never need an administrator to get back in. Whatever happened to its knocks (a
# server down for a day, a middlebox that ate its SYNs, two devices sharing one profile), it can always
# knock with a recovery token: the token of a counter derived from the current time slot, outside the
# normal counter space. The server accepts it at most once, and only while it moves the client's counter
# forward, to a base derived from the slot: every older counter, and every older recovery token, is
# then spent. No state beyond the client's highest accepted counter is needed for that. Pure: the
# caller supplies the time.
from stealth.constants import (
    RECOVERY_BASE_SHIFT,
    RECOVERY_COUNTER_FLAG,
    RECOVERY_SLOT_SECONDS,
    RECOVERY_SLOT_SKEW,
)


def slot_of(unix_seconds: float) -> int:
    """The recovery slot of a wall-clock time."""
    return int(unix_seconds // RECOVERY_SLOT_SECONDS)


def recovery_counter(slot: int) -> int:
    """The counter whose token is slot's recovery token (never a normal counter)."""
    return RECOVERY_COUNTER_FLAG | slot


def recovery_base(slot: int) -> int:
    """The client's highest accepted counter once slot's recovery token is accepted."""
    return slot << RECOVERY_BASE_SHIFT


def live_slots(slot: int) -> range:
    """The slots whose recovery tokens a server at `slot` holds: clock skew up to one slot either way."""
    return range(slot - RECOVERY_SLOT_SKEW, slot + RECOVERY_SLOT_SKEW + 1)
