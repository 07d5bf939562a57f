# Why: the one decision function both live traffic (NFQUEUE) and recorded traffic (pcap) go through.
# receive(bytes, now) -> Decision: a verdict plus the commands the executor must carry out first (persist
# the counter, log the accept). Every rejection is a value with a Reason; no input raises.
import enum
from dataclasses import dataclass, field

from stealth.constants import RETRANSMIT_GRACE_SECONDS
from stealth.core.packet import Reason, Syn, parse_syn
from stealth.core.secret import Secret
from stealth.core.table import Accepted, Entry, TokenTable
from stealth.core.token import session_key


class Verdict(enum.Enum):
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
    client: str
    dport: int
    src: bytes
    sport: int
    counter: int
    retransmit: bool


Command = PersistCounter | LogAccept


@dataclass(frozen=True)
class Decision:
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


def _serial_after(a: int, b: int) -> bool:
    """RFC 1323 timestamp order: a is later than b (mod 2^32)."""
    return 0 < ((a - b) & 0xFFFFFFFF) < 0x80000000


class Gate:
    def __init__(self, table: TokenTable, grace_seconds: float = RETRANSMIT_GRACE_SECONDS) -> None:
        self.table = table
        self.grace_seconds = grace_seconds

    def receive(self, packet: bytes, now: float) -> Decision:
        syn = parse_syn(packet)
        if isinstance(syn, Reason):
            return DROP[syn]
        entry = self.table.lookup(syn.dport, syn.isn, syn.sport)
        if entry is None:
            return DROP[Reason.UNKNOWN_TOKEN]
        bound = self.table.binding_of(entry.index).source
        if bound is not None and bound != syn.src:
            return DROP[Reason.WRONG_SOURCE]
        if not syn.checksum_ok():
            return DROP[Reason.BAD_CHECKSUM]
        if entry.spent:
            return self._retransmit(entry, syn, now)
        accepted = Accepted(syn.src, syn.dst, syn.sport, now, syn.tsval())
        counter = self.table.consume(entry, accepted)
        name = entry.name
        return Decision(
            Verdict.ACCEPT,
            Reason.VALID,
            (
                PersistCounter(name, counter, syn.src),
                LogAccept(name, syn.dport, syn.src, syn.sport, counter, retransmit=False),
            ),
            client=name,
            session_key=_session(entry),
        )

    def _retransmit(self, entry: Entry, syn: Syn, now: float) -> Decision:
        """Pass an exact retransmission of an accepted SYN: same 4-tuple and ISN, within the grace
        period, and (when the original carried TCP timestamps) a strictly later TSval, which a byte-exact
        replay of a recorded SYN cannot have."""
        a = entry.accepted
        if (
            a is None
            or a.src != syn.src
            or a.dst != syn.dst
            or a.sport != syn.sport
            or now - a.at > self.grace_seconds
        ):
            return DROP[Reason.REPLAY]
        if a.tsval is not None:
            tsval = syn.tsval()
            if tsval is None or not _serial_after(tsval, a.tsval):
                return DROP[Reason.REPLAY]
            a.tsval = tsval
        name = entry.name
        log = LogAccept(name, syn.dport, syn.src, syn.sport, entry.counter, retransmit=True)
        return Decision(Verdict.ACCEPT, Reason.RETRANSMIT, (log,), client=name, session_key=_session(entry))
