# Why: a client's key is replaced without a moment in which the client cannot log in. The server enrolls
# the new key beside the old one as the client's *successor*: a token-table entry of its own, with its own
# enrollment id and so its own counter (the client's new key starts counting at 1). Both keys open the
# door until the first knock with the new key is accepted or the deadline passes, whichever comes first;
# from then on only the new key does. This module states that rule once, as pure functions of names,
# counters and times; the token table (core/table.py) retires an old key the moment its successor is
# used, and the clients file (server_state.py) stops listing an old key whose deadline has passed.
#
#   enrolled: key K1 ──rotate──> K1 and K2 both live ──first K2 accept, or deadline──> K2 only
#
# The successor's table name is the client's name with SUCCESSOR_SUFFIX, which no enrolled name can
# contain ("/" is not a name character), so it never collides with another client.

SUCCESSOR_SUFFIX = "/next"


def successor_name(name: str) -> str:
    """The token-table name of `name`'s new key while a rotation is pending."""
    return name + SUCCESSOR_SUFFIX


def predecessor_name(table_name: str) -> str | None:
    """For a successor's table name, the name of the entry it replaces; None for any other name."""
    if table_name.endswith(SUCCESSOR_SUFFIX):
        return table_name[: -len(SUCCESSOR_SUFFIX)]
    return None


def client_name(table_name: str) -> str:
    """The enrolled client a token-table entry belongs to (a successor belongs to its predecessor)."""
    return predecessor_name(table_name) or table_name


def old_key_live(deadline_s: int, now_s: float, successor_counter: int) -> bool:
    """Whether the old key of a pending rotation still opens: before its deadline (unix seconds) and
    while the new key has never been accepted (its highest accepted counter is 0)."""
    return now_s < deadline_s and successor_counter == 0
