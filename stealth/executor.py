# Why: the gate decides; this carries the decision out, and is the only place that does. Every command
# kind the gate can emit (core/gate.py: Command) has one branch in execute(), and a kind without one is
# a type error (assert_never), so a new command cannot be silently ignored. An accept's commands wait for
# the group commit: one journal write and fdatasync for every knock held at that moment
# (counterlog.py), and only then their log lines, their last-accept record, their sources' exemption from
# the SYN rate limit and their session keys for sealed ports. With several workers the commit first
# merges what the other workers made durable, so one counter is never accepted twice.
import collections
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import assert_never

from stealth.accepts import AcceptRecord, format_address
from stealth.constants import REFUSAL_LOG_BURST, REFUSAL_LOG_PER_SECOND, REFUSAL_SUMMARY_SECONDS
from stealth.core.gate import Decision, LogAccept, LogRefusal, PersistCounter, Verdict
from stealth.core.packet import Reason
from stealth.core.ratelimit import LogLimiter
from stealth.core.rotation import client_name
from stealth.core.secret import Secret
from stealth.core.table import TokenTable
from stealth.counterlog import CounterLog
from stealth.errors import StealthError
from stealth.loader import compact_journal
from stealth.sessions import send_key
from stealth.store import locked

log = logging.getLogger("stealth.server")


@dataclass
class Pending:
    """One held knock: what its accept must make durable and log, once committed."""

    persist: PersistCounter | None = None
    logline: LogAccept | None = None
    ident: bytes = b""  # the client's enrollment id: its counter's key in the journal
    session_key: Secret | None = None


class Executor:
    """Carries out one worker's decisions. `counts` (by Reason) is shared with the worker."""

    def __init__(self, table: TokenTable, journal: CounterLog, accepts: AcceptRecord,
                 counts: collections.Counter[str], counters_lock: Path, workers: int,
                 generation: Callable[[], int]) -> None:
        self.table = table
        self.journal = journal
        self.accepts = accepts
        self.counts = counts
        self.counters_lock = counters_lock
        self.workers = workers
        self.refusals = LogLimiter(REFUSAL_LOG_PER_SECOND, REFUSAL_LOG_BURST, REFUSAL_SUMMARY_SECONDS)
        self.pending: list[Pending] = []
        self.keys: socket.socket | None = None  # session keys of accepted knocks, to the acceptor
        self.sealed: frozenset[int] = frozenset()
        self.good_list_fd: int | None = None  # the SYN rate limit's exemption list (/proc/net/xt_recent)
        self._generation = generation  # goes up when clients come or go (loader.ClientSync)
        self._by_ident_generation = -1
        self._by_ident: dict[str, str] = {}

    def execute(self, decision: Decision, now: float) -> bool:
        """Carry out `decision`'s commands: a refusal is logged (rate-limited), an accept's are held for
        commit(). True when the packet must wait for the commit (an accept)."""
        if not decision.commands:  # junk, the common case: nothing to carry out
            return False
        pending = Pending(session_key=decision.session_key)
        for command in decision.commands:
            match command:
                case PersistCounter():
                    pending.persist = command
                    pending.ident = self.table.ident_of(command.client)
                case LogAccept():
                    pending.logline = command
                case LogRefusal():
                    self._log_refusal(command, now)
                case _:
                    assert_never(command)
        if decision.verdict is Verdict.ACCEPT:
            self.pending.append(pending)  # one per held packet, in the queue's order
            return True
        return False

    def _log_refusal(self, c: LogRefusal, now: float) -> None:
        if self.refusals.allow(c.reason, now):
            log.warning("refused reason=%s client=%s port=%d src=[%s]:%d", c.reason, client_name(c.client),
                        c.dport, format_address(c.src), c.sport)

    def log_suppressed(self, now: float, final: bool = False) -> None:
        """One line for the refusals the limiter held back, once per REFUSAL_SUMMARY_SECONDS at most."""
        held = self.refusals.summary(now, final)
        if held:
            log.warning("refusals not logged (rate limit) count=%d %s", sum(held.values()),
                        " ".join(f"{reason}={n}" for reason, n in held.items()))

    def commit(self, now_s: int) -> list[bool]:
        """Make the held knocks' counters durable with one journal write and fdatasync, then carry out
        their other commands. One verdict per held knock: False (drop) when the write fails or, with
        several workers, when another worker already accepted that counter or a later one."""
        pending, self.pending = self.pending, []
        ok = [True] * len(pending)
        try:
            if self.workers > 1:
                with locked(self.counters_lock):
                    self._merge_with_disk(pending, ok)
                    self._persist(pending, ok)
            else:
                self._persist(pending, ok)
        except StealthError as e:
            log.error("cannot persist counters, dropping %d knock(s): %s", len(pending), e)
            self.counts[Reason.PERSIST_FAILED] += len(pending)
            return [False] * len(pending)
        for good, p in zip(ok, pending, strict=True):
            if good:
                self._accepted(p, now_s)
        return ok

    def _accepted(self, p: Pending, now_s: int) -> None:
        """An accept's commands after its counter is durable."""
        if p.persist is not None:
            self._remember_source(p.persist)
        line = p.logline
        if line is None:
            return
        name = client_name(line.client)
        self.accepts.note(p.ident, name, now_s, line.src)
        if p.session_key is not None and self.keys is not None and line.dport in self.sealed:
            send_key(self.keys, line.src, line.sport, line.dport, p.session_key)
        log.info("accept client=%s port=%d src=[%s]:%d counter=%d%s%s", name, line.dport,
                 format_address(line.src), line.sport, line.counter, " recovery" if line.recovery else "",
                 " new-key" if name != line.client else "")
        if line.retired is not None:
            log.info("key rotated client=%s: its new key was used, the old key no longer opens", line.retired)

    def _persist(self, pending: list[Pending], ok: list[bool]) -> None:
        self.journal.append([(p.ident, p.persist.counter) for good, p in zip(ok, pending, strict=True)
                             if good and p.persist is not None])
        if self.journal.needs_compaction(len(self.table.clients)):
            compact_journal(self.journal, self.table)

    def _merge_with_disk(self, pending: list[Pending], ok: list[bool]) -> None:
        """Under the counters lock: a counter another worker made durable since our last commit (the
        same or a later one) loses; our table learns the other workers' accepts, and a held knock of a
        rotated client's old key loses too when another worker's accept of the new key retired it."""
        theirs = self.journal.catch_up()
        if theirs is None:  # another worker compacted the journal: read the whole state again
            theirs = list(self.journal.open().items())
        best: dict[str, int] = {}
        for ident, counter in theirs:
            if counter > best.get(ident, 0):
                best[ident] = counter
        for i, p in enumerate(pending):
            if p.persist is not None and best.get(p.ident.hex(), 0) >= p.persist.counter:
                ok[i] = False
                self.counts[Reason.VALID] -= 1
                self.counts[Reason.REPLAY] += 1
        held = {p.persist.client for p in pending if p.persist is not None}
        enrolled = {name for name in held if name in self.table.index}
        for ident, counter in best.items():
            name = self._name_of(ident)
            if name is not None and name in self.table.clients:
                self.table.advance(name, counter)  # a successor's first counter retires its old key
        for i, p in enumerate(pending):
            if ok[i] and p.persist is not None and p.persist.client in enrolled \
                    and p.persist.client not in self.table.index:
                ok[i] = False
                self.counts[Reason.VALID] -= 1
                self.counts[Reason.REVOKED] += 1

    def _name_of(self, ident: str) -> str | None:
        """The table name of enrollment id `ident` (hex), from a cache rebuilt when clients changed."""
        if self._by_ident_generation != self._generation():
            self._by_ident = {self.table.ident_of(n).hex(): n for n in self.table.clients}
            self._by_ident_generation = self._generation()
        return self._by_ident.get(ident)

    def _remember_source(self, command: PersistCounter) -> None:
        """Exempt a source that knocked successfully from the per-prefix SYN rate limit."""
        if self.good_list_fd is None or command.src is None:
            return
        try:  # one write() per entry on the /proc file kept open since start
            os.write(self.good_list_fd, f"+{format_address(command.src)}\n".encode())
        except OSError as e:
            log.debug("cannot add to the rate-limit exemption list: %s", e)
