# Why: everything one queue needs, and nothing about rules, forks or signals: the token table and the
# gate, the executor that carries out decisions (executor.py), the loader that keeps the table equal to
# clients.jsonl (loader.py), and the loop that polls a PacketQueue (packet_queue.py) and does the
# periodic work between polls. It runs unchanged over NetfilterQueue in the daemon and over the
# in-memory FakeQueue in the unprivileged tests. With --workers N, each forked worker process is one of
# these, on its own queue. Unauthenticated packets are counted, never logged above DEBUG.
import collections
import logging
import os
import time

from stealth.accepts import AcceptRecord
from stealth.constants import (
    RELOAD_POLL_SECONDS,
    RELOAD_STEP_SECONDS,
    RULE_CHECK_SECONDS,
    STATUS_INTERVAL_SECONDS,
)
from stealth.core.gate import Gate
from stealth.core.packet import Reason
from stealth.core.rotation import successor_name
from stealth.core.table import TokenTable
from stealth.errors import StealthError
from stealth.executor import Executor
from stealth.guard import public_listeners
from stealth.loader import ClientSync
from stealth.packet_queue import AfterCommit, PacketQueue
from stealth.server_state import ServerState
from stealth.store import stamp

log = logging.getLogger("stealth.server")
NO_MARK = 0  # accept without a mark: the kernel's stack finds no socket and answers as for an unused port


def exposed_message(listeners: list[str]) -> str:
    """The one-line error for services listening on a protected port's public address."""
    return (f"a socket listens on a protected port's public address ({', '.join(listeners)}); the service "
            "must listen on loopback only (for sshd: ListenAddress 127.0.0.1), stealth hands it the "
            "accepted connections")


class Worker:
    """One queue's packet path and upkeep. handle() and commit() are the queue's callbacks; loop()
    serves a queue until `stop` is set."""

    def __init__(self, state: ServerState, queue: int | None = None, workers: int = 1) -> None:
        self.state = state
        self.config = state.load_config()
        self.queue_num = self.config.queue if queue is None else queue
        self.workers = workers
        self.worker: int | None = None  # index of this worker process, None in the parent
        self.counts: collections.Counter[str] = collections.Counter()
        self.journal = state.counter_log()
        self.table = TokenTable(self.config.window)
        self.gate = Gate(self.table)
        self.sync = ClientSync(state, self.config, self.table, self.journal)
        self.executor = Executor(self.table, self.journal, self.accept_record(None), self.counts,
                                 state.counters_lock, workers, lambda: self.sync.generation)
        self.executor.sealed = frozenset(self.config.sealed)  # followed from server.toml while running
        self.stop = False
        self.reset_families: set[int] = set()
        self.modes: dict[int, str] = {}  # family -> the unauth mode its rules were installed with
        self.exposed: list[str] = []  # public listeners on protected ports: reject by dropping
        self._config_stamp = stamp(self.state.config_path)

    # --- the queue's callbacks ---------------------------------------------------------------------
    def handle(self, payload: bytes) -> int | AfterCommit | None:
        """The verdict for one packet from the queue: a knock waits for the commit (AfterCommit); every
        other packet is counted and rejected."""
        now = time.monotonic()
        decision = self.gate.receive(payload, now)
        self.counts[decision.reason] += 1
        if self.executor.execute(decision, now):
            return AfterCommit(self.config.mark)  # every accept waits until its counter is durable
        return self.reject(payload)

    def reject(self, payload: bytes) -> int | None:
        """Verdict for an unauthenticated packet: drop it, or (reset mode) pass it on unmarked to the
        kernel, which finds no socket on the protected port and answers with its own RST. While some
        socket listens on a protected port's public address, always drop: never towards that socket."""
        if self.exposed or not payload:
            return None
        return NO_MARK if (payload[0] >> 4) in self.reset_families else None

    def commit(self) -> list[bool]:
        """The queue's group commit: one verdict per held knock (executor.Executor.commit)."""
        return self.executor.commit(int(time.time()))

    def on_error(self, error: BaseException) -> None:
        """The queue's error callback: counted, logged at DEBUG only; the packet was dropped."""
        self.counts[Reason.INTERNAL_ERROR] += 1
        log.debug("internal error on a packet: %r", error)

    # --- state -------------------------------------------------------------------------------------
    def start(self) -> None:
        """The first load of the table (loader.ClientSync.start)."""
        self.sync.start()

    def load(self, counters: dict[str, int] | None = None, validate: bool = True) -> None:
        """Reload clients.jsonl in one go (loader.ClientSync.load)."""
        self.sync.load(counters, validate)

    def maybe_reload(self) -> None:
        """One step of a reload, when one is due (loader.ClientSync.maybe_reload)."""
        self.sync.maybe_reload()

    def retire_expired(self) -> None:
        """Retire the old keys of rotations whose deadline passed."""
        self.sync.retire_expired()

    @property
    def reload_error(self) -> str | None:
        """Why the last reload failed (the previous clients stay in use); None after a good one."""
        return self.sync.reload_error

    @property
    def accepts(self) -> AcceptRecord:
        """This process's record of each client's last accepted knock (accepts.py)."""
        return self.executor.accepts

    def accept_record(self, worker: int | None) -> AcceptRecord:
        """The last-accept record of this process (worker `worker`, or the server), whose entries stay
        only for keys the table still holds (a rotating client's new key is held as its successor)."""
        def live(ident: str, name: str) -> bool:
            return any(n in self.table.clients and self.table.ident_of(n).hex() == ident
                       for n in (name, successor_name(name)))

        return AcceptRecord(*self.state.accept_paths(worker), live)

    def status(self, families: list[int]) -> dict[str, object]:
        """This process's status.json document."""
        return {
            "pid": os.getpid(), "queue": self.queue_num, "workers": self.workers,
            "ports": list(self.config.ports),
            "families": families, "clients": self.table.client_count, "table_entries": len(self.table),
            "counts": dict(sorted(self.counts.items())), "reload_error": self.reload_error,
            "public_listeners": self.exposed,
            "unauth_modes": {f"ipv{f}": mode for f, mode in sorted(self.modes.items())},
        }

    # --- the loop ----------------------------------------------------------------------------------
    def loop(self, queue: PacketQueue, families: list[int]) -> None:
        """Serve `queue` until `stop`: poll it, and between polls advance reloads and slot moves, fold
        last accepts, retire expired keys, watch for exposed listeners and write status."""
        next_status = next_reload = next_watch = 0.0
        while not self.stop:
            busy = self.sync.busy or self.accepts.folding
            queue.poll(0 if busy else min(RELOAD_POLL_SECONDS, STATUS_INTERVAL_SECONDS) / 2)
            now = time.monotonic()
            if now >= next_watch:
                self.watch()
                next_watch = now + RULE_CHECK_SECONDS
            if self.sync.reloading or self.sync.reload_requested or now >= next_reload:
                self.sync.maybe_reload()
                next_reload = now + RELOAD_POLL_SECONDS
            self.sync.maybe_move_slot()
            if not self.sync.reloading and (now >= next_status or self.accepts.folding):
                self.accepts.flush(RELOAD_STEP_SECONDS)  # a fold keeps the clients the table knows
            if now >= next_status:
                self.sync.retire_expired()
                self.publish(families)
                next_status = now + STATUS_INTERVAL_SECONDS
            self.executor.log_suppressed(now)
        self.executor.log_suppressed(time.monotonic(), final=True)

    def publish(self, families: list[int]) -> None:
        """Write this process's status (status.json, or status.w<i>.json for worker i)."""
        try:
            self.state.write_status({**self.status(families), "running": True}, self.worker)
        except StealthError as e:
            log.warning("cannot write status: %s", e)

    def watch(self) -> None:
        """About once a second: a public listener on a protected port makes every reject a drop; a
        changed server.toml may seal or unseal ports."""
        config_now = stamp(self.state.config_path)
        if config_now != self._config_stamp:
            self._config_stamp = config_now
            try:
                self.executor.sealed = frozenset(self.state.load_config().sealed)
            except StealthError as e:
                log.error("%s; keeping the sealed ports as they were", e)
        exposed = public_listeners(self.config.ports)
        if exposed and exposed != self.exposed:
            log.error("%s; dropping every unauthenticated SYN until it is gone", exposed_message(exposed))
        self.exposed = exposed
