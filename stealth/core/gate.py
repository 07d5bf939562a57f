# Why: the one decision function both live traffic (NFQUEUE) and recorded traffic (pcap) go through.
# receive(bytes, now) -> Decision: a verdict plus the commands the executor must carry out first (persist
# the counter, log the accept, or log a refused replay or wrong-source knock of a known client's token).
# Every rejection is a value with a Reason; no input raises.
# A token passes once. There is no rule for "exact retransmissions" here: the kernel's resent SYN of an
# accepted knock finds the connection's conntrack mark and never reaches the queue, and anything that
# does reach it with a spent token (whatever its timestamp or other unauthenticated fields) is a replay.
import enum
from dataclasses import dataclass, field

from stealth.core.packet import Reason, Syn, parse_syn
from stealth.core.rotation import predecessor_name
from stealth.core.secret import Secret
from stealth.core.table import Entry, TokenTable
from stealth.core.token import session_key


class Verdict(enum.Enum):
    """What the queue is told: ACCEPT (once the commands are carried out) or DROP."""

    ACCEPT = "accept"
    DROP = "drop"


@dataclass(frozen=True)
class PersistCounter:
    """Make `counter` the client's durable highest accepted counter before the verdict is given."""

    client: str
    counter: int
    src: bytes | None = None  # the source that knocked (exempted from per-prefix rate limits)


@dataclass(frozen=True)
class LogAccept:
    """Log one accepted knock (its counter: for a recovery token, the client's new base). `retired`: the
    knock was the first with a rotated client's new key, and the old key stopped opening with it."""

    client: str
    dport: int
    src: bytes
    sport: int
    counter: int
    recovery: bool
    retired: str | None = None


@dataclass(frozen=True)
class LogRefusal:
    """Log one refused knock that carried a known client's token (a replay, a token bound to another
    source, a revoked key's): the one kind of drop worth a line with its source. The executor
    rate-limits these lines."""

    reason: Reason
    client: str
    dport: int
    src: bytes
    sport: int


Command = PersistCounter | LogAccept | LogRefusal


@dataclass(frozen=True)
class Decision:
    """receive()'s answer: the verdict, its Reason, the commands to carry out before the verdict (in
    order), and on accept the client's name and the connection's session key (hidden from repr)."""

    verdict: Verdict
    reason: Reason
    commands: tuple[Command, ...] = ()
    client: str | None = None
    session_key: Secret | None = field(default=None, repr=False)


# Drops are the common case (every junk packet): one shared, immutable Decision per reason.
DROP = {reason: Decision(Verdict.DROP, reason) for reason in Reason}


def _session(entry: Entry) -> Secret:
    spec = entry.client.spec
    return session_key(spec.key, spec.binding, entry.dport, entry.counter)


def _refused(reason: Reason, entry: Entry, syn: Syn) -> Decision:
    """A drop of a known client's token, with the line the executor logs about it."""
    return Decision(Verdict.DROP, reason, (LogRefusal(reason, entry.name, syn.dport, syn.src, syn.sport),))


class Gate:
    """The decision for one packet from the queue, against one token table (which it updates on accept)."""

    def __init__(self, table: TokenTable) -> None:
        self.table = table

    def receive(self, packet: bytes, now: float) -> Decision:
        """Parse `packet` (raw IP bytes from the queue or a capture) and decide. ACCEPT only for a bare
        SYN whose (port, ISN, source port) is a live token of an enrolled client, from the bound source if
        the client has one, with a good checksum; the table then counts the token as spent before this
        returns, and the commands say what must be durable before the verdict. `now` is the time the
        packet arrived (monotonic seconds), kept for callers' bookkeeping; no rule depends on it."""
        syn = parse_syn(packet)
        if isinstance(syn, Reason):
            return DROP[syn]
        entry = self.table.lookup(syn.dport, syn.isn, syn.sport)
        if entry is None:
            return DROP[Reason.UNKNOWN_TOKEN]
        if self.table.is_revoked(entry.index):
            return _refused(Reason.REVOKED, entry, syn)
        bound = self.table.binding_of(entry.index).source
        if bound is not None and bound != syn.src:
            return _refused(Reason.WRONG_SOURCE, entry, syn)
        if not syn.checksum_ok():
            return DROP[Reason.BAD_CHECKSUM]
        if entry.spent:
            return _refused(Reason.REPLAY, entry, syn)
        name = entry.name
        old = predecessor_name(name)
        retired = old if old is not None and old in self.table.index else None
        counter = self.table.consume(entry)  # retires the old key of a rotation (core/rotation.py)
        return Decision(
            Verdict.ACCEPT,
            Reason.RECOVERY if entry.recovery else Reason.VALID,
            (
                PersistCounter(name, counter, syn.src),
                LogAccept(name, syn.dport, syn.src, syn.sport, counter, entry.recovery, retired),
            ),
            client=name,
            session_key=_session(entry),
        )
