# Why: the pcap tests replay what scripts/record-captures recorded against expectations that come from
# what it sent, never from running the gate. This module is that bookkeeping: each step of a recording
# is a time window that knows what it sent (tokens, scanner probes, crafted bytes) and so which verdict
# each packet arriving in it must get; a Recording turns its capture into manifest rows.
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stealth.constants import RECOVERY_BASE_SHIFT, RECOVERY_COUNTER_FLAG

PROTECTED = (22, 2222)
TCP_FLAG_FIN, TCP_FLAG_SYN, TCP_FLAG_RST, TCP_FLAG_ACK = 0x01, 0x02, 0x04, 0x10


# --- expectations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """The verdict (and reason) `stealth inspect` must give one captured packet, and why."""

    verdict: str  # accept, drop or ignore
    reason: str | None
    what: str

    def row(self, index: int) -> dict[str, Any]:
        """The manifest row of packet `index`."""
        row: dict[str, Any] = {"index": index, "verdict": self.verdict}
        if self.reason is not None:
            row["reason"] = self.reason
        row["what"] = self.what
        return row


def accept(reason: str, what: str) -> Expect:
    """Expect the gate to accept the packet."""
    return Expect("accept", reason, what)


def drop(reason: str, what: str) -> Expect:
    """Expect the gate to drop the packet for `reason`."""
    return Expect("drop", reason, what)


@dataclass
class Pkt:
    """One captured frame, decoded as far as scapy can (crafted garbage may not decode)."""

    index: int
    time: float
    frame: bytes
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    flags: int | None = None
    seq: int | None = None

    @property
    def bare_syn(self) -> bool:
        """SYN set, FIN, RST and ACK clear."""
        return self.flags is not None and self.flags & 0x17 == TCP_FLAG_SYN

    def describe(self) -> str:
        """One line for error messages."""
        return f"#{self.index} {self.src}:{self.sport} > {self.dst}:{self.dport} flags={self.flags}"


def read_capture(path: Path) -> list[Pkt]:
    """Every frame of the pcap at `path`, in order."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader

    out = []
    with RawPcapReader(str(path)) as reader:
        for index, (frame, meta) in enumerate(reader):
            p = Pkt(index, meta.sec + meta.usec / 1e6, bytes(frame))
            try:
                e = Ether(p.frame)
                ip = e.getlayer(IP) or e.getlayer(IPv6)
                if ip is not None:
                    p.src, p.dst = str(ip.src), str(ip.dst)
                tcp = e.getlayer(TCP)
                if tcp is not None:
                    p.sport, p.dport = int(tcp.sport), int(tcp.dport)
                    p.flags, p.seq = int(tcp.flags), int(tcp.seq)
            except Exception:  # noqa: BLE001 -- crafted garbage; such frames are matched by their bytes
                p.src = p.dst = None
            out.append(p)
    return out


# --- steps: a time window of the recording and how to classify what arrived in it ----------------------
class Step:
    """A time window of a recording: what was sent in it and so what each packet in it must get."""

    what = "step"
    start = 0.0
    end = 0.0

    def classify(self, p: Pkt) -> Expect:
        """The expectation for packet `p`, which arrived in this step; raise if it was not planned."""
        raise NotImplementedError

    def finish(self) -> None:
        """Raise if something this step sent never showed up in the capture."""


@dataclass(frozen=True)
class Wire:
    """The token image a knock put on the wire: a counter's, or (counter RECOVERY_COUNTER_FLAG | slot) a
    recovery token's (stealth/core/recovery.py)."""

    counter: int
    dport: int
    isn: int
    sport: int | None

    @property
    def recovery(self) -> bool:
        """A recovery token (the gate accepts it as RECOVERY, not VALID)."""
        return bool(self.counter & RECOVERY_COUNTER_FLAG)

    @property
    def label(self) -> str:
        """The token in words: which counter, or which slot's recovery token."""
        if self.recovery:
            return f"recovery token of slot {self.counter & ~RECOVERY_COUNTER_FLAG}"
        slot, offset = divmod(self.counter, 1 << RECOVERY_BASE_SHIFT)
        if slot:
            return f"counter {offset} after slot {slot}'s recovery base"
        return f"counter {self.counter}"


class KnockStep(Step):
    """Kernel SYNs from stealth-connect (or the knock helper) carrying known tokens of one client.

    accepted: the step's knock gets in at once, so its SYNs carry one token: the first SYN is VALID (a
    recovery token's RECOVERY), later ones on the same tuple (the kernel's retransmissions, planned with
    `retransmits`) REPLAY (live, conntrack's mark carries them past the queue; the gate alone counts a
    spent token as spent), and every other packet of the connection NOT_SYN; a second token is unplanned.
    With `recovers` the step is accepted by recovery: the client's counters are refused (each SYN gets
    `recovers`, and its RST sends the client on) and its recovery token is the one that gets in.
    Otherwise every SYN of every token the client sends (after an RST stealth-connect falls back to its
    recovery token and to the first counter after that slot's base; after silence a later run sends its
    pending knock again) gets `reason`. `history` (shared by the steps of a session, filled in capture
    order) names the step that first sent a token, so a token sent again (a pending knock resent by a
    later run, a second device's copy of a profile) is told from a first knock."""

    def __init__(self, what: str, client_ip: str, wires: Sequence[Wire], accepted: bool, reason: str = "",
                 retransmits: bool = False, history: dict[tuple[int, int], str] | None = None,
                 recovers: str = "") -> None:
        self.what, self.client_ip, self.wires = what, client_ip, list(wires)
        self.accepted, self.reason, self.retransmits = accepted, reason, retransmits
        self.recovers = recovers
        self.refused: set[tuple[int, int]] = set()  # (dport, isn) of counters refused before a recovery
        self.history = {} if history is None else history
        self.seen: dict[tuple[int, int, int], int] = {}  # (dport, isn, sport) -> SYNs seen

    def classify(self, p: Pkt) -> Expect:
        if p.src != self.client_ip:
            raise RuntimeError(f"{self.what}: unexpected packet {p.describe()}")
        if p.bare_syn:
            return self.classify_syn(p)
        if self.accepted and any(k[0] == p.dport and k[2] == p.sport and k[:2] not in self.refused
                                 for k in self.seen):
            return drop("not_syn", f"{self.what}: ACK/data/FIN of the accepted connection")
        raise RuntimeError(f"{self.what}: unexpected packet {p.describe()}")

    def classify_syn(self, p: Pkt) -> Expect:
        """A bare SYN of this step: which token it carries, and what that token must get."""
        wire = next((w for w in self.wires if w.isn == p.seq and w.dport == p.dport
                     and w.sport in (None, p.sport)), None)
        if wire is None:
            raise RuntimeError(f"{self.what}: SYN with no token we sent: {p.describe()}")
        assert p.sport is not None and p.dport is not None
        key = (p.dport, wire.isn, p.sport)
        n = self.seen.get(key, 0)
        tokens_before = {(k[0], k[1]) for k in self.seen} - self.refused
        self.seen[key] = n + 1
        label = f"{self.what}, {wire.label}"
        first_by = self.history.setdefault((p.dport, wire.isn), self.what)
        if n:
            label += f", kernel retransmission {n}"
        elif (p.dport, wire.isn) in tokens_before:
            label += ", sent again on another tuple"
        elif first_by != self.what:  # a pending knock sent again by a later run, or another device's copy
            label += f", the token '{first_by}' sent before, sent again"
        if not self.accepted:
            return drop(self.reason, label)
        if self.recovers and not wire.recovery:
            self.refused.add((p.dport, wire.isn))
            return drop(self.recovers, f"{label}, refused: the client then knocks with its recovery token")
        if first_by != self.what:
            raise RuntimeError(f"{self.what}: unplanned: an earlier step's knock sent again {p.describe()}")
        if tokens_before - {(p.dport, wire.isn)}:
            raise RuntimeError(f"{self.what}: unplanned second knock (the first was not taken?) "
                               f"{p.describe()}; rerun")
        if n == 0 and not tokens_before:
            return accept("recovery" if wire.recovery else "valid", label)
        if not self.retransmits:
            raise RuntimeError(f"{self.what}: unplanned SYN retransmission {p.describe()}; rerun")
        return drop("replay", f"{label} (live, conntrack's mark lets it in)")

    def finish(self) -> None:
        if not self.seen:
            raise RuntimeError(f"{self.what}: no SYN was captured")
        if self.retransmits and max(self.seen.values()) < 2:
            raise RuntimeError(f"{self.what}: the forced SYN retransmission did not happen; rerun")
        if self.recovers and not (self.refused and {k[:2] for k in self.seen} - self.refused):
            raise RuntimeError(f"{self.what}: planned a refused counter, then a recovery token that gets in")


class ScanStep(Step):
    """A scanner's probes: every probe of this step to a protected port has the one expected reason."""

    def __init__(self, what: str, src_ips: Sequence[str], reason: str, flag_check: Callable[[int], bool],
                 minimum: int = 1) -> None:
        self.what, self.src_ips, self.reason, self.flag_check = what, set(src_ips), reason, flag_check
        self.minimum, self.count = minimum, 0

    def classify(self, p: Pkt) -> Expect:
        if p.src not in self.src_ips or p.flags is None or not self.flag_check(p.flags):
            raise RuntimeError(f"{self.what}: unexpected packet {p.describe()}")
        self.count += 1
        return drop(self.reason, self.what)

    def finish(self) -> None:
        if self.count < self.minimum:
            raise RuntimeError(f"{self.what}: {self.count} probes captured, expected >= {self.minimum}")


class CraftedStep(Step):
    """Frames we built byte by byte: each must arrive exactly once, in order, with its own expectation.
    The sender's kernel may answer a SYN-ACK with a RST; those are NOT_SYN."""

    def __init__(self, what: str, frames: Sequence[tuple[bytes, Expect]],
                 rst_from: Sequence[str] = ()) -> None:
        self.what, self.frames, self.rst_from = what, list(frames), set(rst_from)
        self.seen: set[int] = set()

    def match(self, p: Pkt) -> Expect | None:
        """The expectation of the first not yet seen crafted frame that `p` starts with, if any."""
        for i, (frame, expect) in enumerate(self.frames):
            if i not in self.seen and p.frame[: len(frame)] == frame:
                self.seen.add(i)
                return expect
        return None

    def classify(self, p: Pkt) -> Expect:
        if p.src in self.rst_from and p.flags is not None and p.flags & TCP_FLAG_RST:
            return drop("not_syn", f"{self.what}: the sender kernel's RST to the server's SYN-ACK")
        raise RuntimeError(f"{self.what}: unexpected packet {p.describe()}")

    def finish(self) -> None:
        missing = [e.what for i, (_, e) in enumerate(self.frames) if i not in self.seen]
        if missing:
            raise RuntimeError(f"{self.what}: crafted frames not captured: {missing}")


@dataclass
class Recording:
    """One capture file: its manifest entry and the steps recorded into it."""

    name: str
    covers: list[str]
    description: str
    state: str = "state"
    steps: list[Step] = field(default_factory=list)
    path: Path | None = None

    def manifest(self, server_ips: set[str], errors: list[str]) -> dict[str, Any]:
        """The manifest entry of the capture; what does not match the plan is appended to `errors`."""
        assert self.path is not None
        rows = []
        for p in read_capture(self.path):
            try:
                rows.append(self.expect(p, server_ips).row(p.index))
            except RuntimeError as e:
                errors.append(f"{self.name}: {e}")
        for step in self.steps:
            try:
                step.finish()
            except RuntimeError as e:
                errors.append(f"{self.name}: {e}")
        return {"covers": self.covers, "description": self.description, "state": self.state,
                "packets": rows}

    def expect(self, p: Pkt, server_ips: set[str]) -> Expect:
        """The expectation for packet `p`: from the step it arrived in, or `ignore`."""
        step = next((s for s in self.steps if s.start <= p.time < s.end), None)
        expect = step.match(p) if isinstance(step, CraftedStep) else None
        if expect is not None:
            return expect
        if p.dst not in server_ips or p.dport not in PROTECTED:
            where = "from the server" if p.src in server_ips else "not to a protected port"
            return Expect("ignore", None, where)
        if step is None:
            raise RuntimeError(f"packet outside every step: {p.describe()}")
        return step.classify(p)

