# Why: the executor of `stealth server run`. It wires the pure gate to the outside: NFQUEUE in, verdicts
# out, counters persisted durably *before* an accept verdict (group commit: one journal fdatasync per
# batch, see counterlog.py), firewall rules installed at start and removed on SIGTERM/SIGINT (until a
# queue is bound its SYNs are dropped: fail closed), clients reloaded on SIGHUP or when clients.jsonl
# changes, drop counts and the unauth mode of each family published to status.json, each client's last
# accepted knock kept in accepts.* (see accepts.py). With --workers N it forks N queue workers and
# supervises them. Unauthenticated packets are counted, never logged above DEBUG; a refused knock of a known
# client's token (a replay, a wrong source) is logged as a warning with its source, rate-limited.
import collections
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType

from stealth.acceptor import Plan, open_listeners, spawn
from stealth.accepts import AcceptRecord
from stealth.constants import (
    REFUSAL_LOG_BURST,
    REFUSAL_LOG_PER_SECOND,
    REFUSAL_SUMMARY_SECONDS,
    RELOAD_POLL_SECONDS,
    RELOAD_STEP_SECONDS,
    RULE_CHECK_SECONDS,
    STATUS_INTERVAL_SECONDS,
)
from stealth.core.gate import Command, Gate, LogAccept, LogRefusal, PersistCounter, Verdict
from stealth.core.packet import Reason
from stealth.core.ratelimit import LogLimiter
from stealth.core.recovery import slot_of
from stealth.core.rotation import client_name
from stealth.core.secret import Secret
from stealth.core.table import TokenTable
from stealth.errors import ConfigError, StealthError
from stealth.firewall import RuleConfig, available_families, install
from stealth.guard import Guard, public_listeners
from stealth.hoststyle import host_unused_port_mode
from stealth.nfqueue import AfterCommit, Queue
from stealth.server_state import ServerConfig, ServerState
from stealth.sessions import key_channel, send_key
from stealth.store import locked, stamp

log = logging.getLogger("stealth.server")
# the accept's commands, the client's enrollment id, and the session key (for a sealed port's relay)
PendingAccept = tuple[PersistCounter | None, LogAccept | None, bytes, Secret | None]
NO_MARK = 0  # accept without a mark: the kernel's stack finds no socket and answers as for an unused port


def format_addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def build_table(state: ServerState, config: ServerConfig, counters: dict[str, int]) -> TokenTable:
    """The token table of every enrolled client, sized once for all of them (W live + W spent tokens per
    client and port), from clients.jsonl streamed and the stored counters."""
    table = TokenTable(config.window)
    # sized once, up front: growing later re-inserts every token (seconds at a million clients)
    table.reserve(table.tokens_for(state.count_clients(), len(config.ports)))
    sync_table(table, state, config, counters)
    return table


def sync_table(table: TokenTable, state: ServerState, config: ServerConfig, counters: dict[str, int]) -> None:
    for _ in sync_steps(table, state, config, counters):
        pass


def sync_steps(
    table: TokenTable, state: ServerState, config: ServerConfig, counters: dict[str, int]
) -> Iterator[None]:
    """table.sync_steps() from clients.jsonl: every key that opens now (time.time()), at the higher of its
    stored counter and its admin floor."""
    specs = state.iter_specs(config, time.time())
    try:
        yield from table.sync_steps(
            (spec, max(counters.get(spec.ident.hex(), 0), floor)) for spec, floor in specs)
    except ValueError as e:  # enrolled twice, too many distinct ports
        raise ConfigError(state.clients_path, str(e)) from None


def check_clients(state: ServerState, config: ServerConfig) -> None:
    for _ in check_steps(state, config):
        pass


def check_steps(state: ServerState, config: ServerConfig, chunk: int = 2000) -> Iterator[None]:
    """Validate all of clients.jsonl without touching the table, so a bad reload keeps the old clients
    instead of leaving them half replaced (sync streams and changes the table as it reads)."""
    names: set[str] = set()
    for record in state.iter_records(config):
        if record.name in names:
            raise ConfigError(state.clients_path, f"client {record.name!r} is enrolled twice")
        names.add(record.name)
        if len(names) % chunk == 0:
            yield


def exposed_message(listeners: list[str]) -> str:
    return (f"a socket listens on a protected port's public address ({', '.join(listeners)}); the service "
            "must listen on loopback only (for sshd: ListenAddress 127.0.0.1), stealth hands it the "
            "accepted connections")


class Server:
    def __init__(self, state: ServerState, queue: int | None = None, workers: int = 1) -> None:
        self.state = state
        self.config = state.load_config()
        self.queue_num = self.config.queue if queue is None else queue
        self.workers = workers
        self.worker: int | None = None  # index of this worker process, None in the parent
        self.counts: collections.Counter[str] = collections.Counter()
        self.refusals = LogLimiter(REFUSAL_LOG_PER_SECOND, REFUSAL_LOG_BURST, REFUSAL_SUMMARY_SECONDS)
        self.log = state.counter_log()
        self._by_ident: dict[str, str] | None = None  # enrollment id -> name, built when a worker needs it
        self.table = TokenTable(self.config.window)
        self.gate = Gate(self.table)
        self.stop = False
        self.reload_requested = False
        self.reload_error: str | None = None
        self._clients_stamp: tuple[int, int, int] | None = None
        self._reload: Iterator[None] | None = None  # a reload in progress, advanced between queue polls
        self._slot_move: Iterator[None] | None = None  # recovery tokens moving to a new slot, likewise
        self.reset_families: set[int] = set()
        self.modes: dict[int, str] = {}  # family -> the unauth mode its rules were installed with
        self.accepts = self._accept_record(None)
        self._pending: list[PendingAccept] = []
        self.good_list_fd: int | None = None
        self.exposed: list[str] = []  # public listeners on protected ports: reject by dropping
        self.guard: Guard | None = None  # in the process that checks the rules (not in workers)
        self.keys: socket.socket | None = None  # session keys of accepted knocks, to the acceptor
        self.sealed = frozenset(self.config.sealed)  # followed from server.toml while running
        self._config_stamp = stamp(self.state.config_path)

    # --- packet path -------------------------------------------------------------------------------
    def reject(self, payload: bytes) -> int | None:
        """Verdict for an unauthenticated packet: drop it, or (reset mode) pass it on unmarked to the
        kernel, which finds no socket on the protected port and answers with its own RST. While some
        socket listens on a protected port's public address, always drop: never towards that socket."""
        if self.exposed or not payload:
            return None
        return NO_MARK if (payload[0] >> 4) in self.reset_families else None

    def handle(self, payload: bytes) -> int | AfterCommit | None:
        now = time.monotonic()
        decision = self.gate.receive(payload, now)
        if decision.verdict is Verdict.DROP:
            self.counts[decision.reason] += 1
            if decision.commands:  # a known client's token, refused: one line, rate-limited
                self._log_refusals(decision.commands, now)
            return self.reject(payload)
        persist = next((c for c in decision.commands if isinstance(c, PersistCounter)), None)
        logline = next((c for c in decision.commands if isinstance(c, LogAccept)), None)
        ident = self.table.ident_of(persist.client) if persist is not None else b""
        self.counts[decision.reason] += 1
        self._pending.append((persist, logline, ident, decision.session_key))  # one per held packet
        return AfterCommit(self.config.mark)  # every accept waits until its counter is durable

    def _log_refusals(self, commands: tuple[Command, ...], now: float) -> None:
        for c in commands:
            if isinstance(c, LogRefusal) and self.refusals.allow(c.reason, now):
                log.warning("refused reason=%s client=%s port=%d src=[%s]:%d", c.reason,
                            client_name(c.client), c.dport, format_addr(c.src), c.sport)

    def _log_suppressed(self, now: float, final: bool = False) -> None:
        """One line for the refusals the limiter held back, once per REFUSAL_SUMMARY_SECONDS at most."""
        held = self.refusals.summary(now, final)
        if held:
            log.warning("refusals not logged (rate limit) count=%d %s", sum(held.values()),
                        " ".join(f"{reason}={n}" for reason, n in held.items()))

    def commit(self) -> list[bool]:
        """Make the held knocks' counters durable with one journal write and fdatasync, then log them and
        exempt their sources from the rate limit. One verdict per held knock: False (drop) when the write
        fails or, with several workers, when another worker already accepted that counter or a later one."""
        pending, self._pending = self._pending, []
        ok = [True] * len(pending)
        try:
            if self.workers > 1:
                with locked(self.state.counters_lock):
                    self._merge_with_disk(pending, ok)
                    self._persist(pending, ok)
            else:
                self._persist(pending, ok)
        except StealthError as e:
            log.error("cannot persist counters, dropping %d knock(s): %s", len(pending), e)
            self.counts[Reason.PERSIST_FAILED] += len(pending)
            return [False] * len(pending)
        now = int(time.time())
        for good, (persist, logline, ident, session_key) in zip(ok, pending, strict=True):
            if not good:
                continue
            if logline is not None:
                self.accepts.note(ident, logline.client, now, logline.src)
            if persist is not None:
                self._remember_source(persist)
            if (logline is not None and session_key is not None and self.keys is not None
                    and logline.dport in self.sealed):
                send_key(self.keys, logline.src, logline.sport, logline.dport, session_key)
            if logline is not None:
                log.info(
                    "accept client=%s port=%d src=[%s]:%d counter=%d%s%s", client_name(logline.client),
                    logline.dport, format_addr(logline.src), logline.sport, logline.counter,
                    " recovery" if logline.recovery else "", " new-key" if logline.client != client_name(
                        logline.client) else "",
                )
            if logline is not None and logline.retired is not None:
                log.info("key rotated client=%s: its new key was used, the old key no longer opens",
                         logline.retired)
        return ok

    def _persist(self, pending: list[PendingAccept], ok: list[bool]) -> None:
        self.log.append([(ident, p.counter) for good, (p, _, ident, _) in zip(ok, pending, strict=True)
                         if good and p is not None])
        if self.log.needs_compaction(len(self.table.clients)):
            self._compact()

    def _compact(self) -> None:
        """Fold the journal into a new snapshot: what is durable on disk, raised to our table's counters."""
        counters = self.log.read()
        for ident, last in self.table.counters():
            if last > counters.get(ident, 0):
                counters[ident] = last
        self.log.compact(sorted(counters.items()))

    def _merge_with_disk(self, pending: list[PendingAccept], ok: list[bool]) -> None:
        """Under the counters lock: a counter another worker made durable since our last commit (the
        same or a later one) loses; our table learns the other workers' accepts."""
        theirs = self.log.catch_up()
        if theirs is None:  # another worker compacted the journal: read the whole state again
            theirs = list(self.log.open().items())
        best: dict[str, int] = {}
        for ident, counter in theirs:
            if counter > best.get(ident, 0):
                best[ident] = counter
        for i, (persist, _, raw_ident, _) in enumerate(pending):
            if persist is not None and best.get(raw_ident.hex(), 0) >= persist.counter:
                ok[i] = False
                self.counts[Reason.VALID] -= 1
                self.counts[Reason.REPLAY] += 1
        if best:
            if self._by_ident is None:
                self._by_ident = {self.table.ident_of(n).hex(): n for n in self.table.clients}
            for ident, counter in best.items():
                name = self._by_ident.get(ident)
                if name is not None and name in self.table.clients:
                    self.table.advance(name, counter)

    def _remember_source(self, command: PersistCounter) -> None:
        """Exempt a source that knocked successfully from the per-prefix SYN rate limit."""
        if self.good_list_fd is None or command.src is None:
            return
        try:  # one write() per entry on the /proc file kept open since start
            os.write(self.good_list_fd, f"+{format_addr(command.src)}\n".encode())
        except OSError as e:
            log.debug("cannot add to the rate-limit exemption list: %s", e)

    def on_error(self, error: BaseException) -> None:
        self.counts[Reason.INTERNAL_ERROR] += 1
        log.debug("internal error on a packet: %r", error)

    # --- state -------------------------------------------------------------------------------------
    def _stamp(self) -> tuple[int, int, int] | None:
        return stamp(self.state.clients_path)

    def load(self, counters: dict[str, int] | None = None, validate: bool = True) -> None:
        """(Re)load clients.jsonl into the table in one go (at start, and in the parent of workers)."""
        for _ in self._load_steps(counters, validate):
            pass

    def _load_steps(self, counters: dict[str, int] | None = None, validate: bool = True) -> Iterator[None]:
        """Known clients keep their in-memory counters (they are at least what is on disk); `counters`
        (from disk) matter for clients the table does not know yet. A reload validates the whole file
        first, so it is all or nothing (at start, a bad file stops the server anyway)."""
        stamp = self._stamp()
        if validate:
            yield from check_steps(self.state, self.config)
        yield from sync_steps(self.table, self.state, self.config, counters or {})
        self._by_ident = None
        self._clients_stamp = stamp

    def start(self) -> None:
        """First load: repair and open the counter journal, build the table, and fold a long journal."""
        counters = self.log.open()
        self.table.reserve(self.table.tokens_for(self.state.count_clients(), len(self.config.ports)))
        self.table.set_slot(slot_of(time.time()))  # before the clients: each gets its recovery tokens
        self.load(counters, validate=False)
        if self.log.needs_compaction(len(self.table.clients)):
            self._compact()

    def maybe_reload(self) -> None:
        """Start a reload when clients.jsonl changed (or on SIGHUP), and advance a running one by about
        RELOAD_STEP_SECONDS of work: with a million clients a reload takes seconds, and the queue is
        served between steps instead of waiting for all of it."""
        if self._reload is None:
            if not self.reload_requested and self._stamp() == self._clients_stamp:
                return
            self.reload_requested = False
            self._reload = self._load_steps()
        deadline = time.monotonic() + RELOAD_STEP_SECONDS
        try:
            next(self._reload)
            while time.monotonic() < deadline:
                next(self._reload)
            return
        except StopIteration:
            self._reload = None
        except StealthError as e:
            self._reload = None
            self._clients_stamp = self._stamp()
            self.reload_error = str(e)
            log.error("reload failed, keeping the previous clients: %s", e)
            return
        self.reload_error = None
        log.info("reloaded: %d clients enrolled", len(self.table.clients))

    def maybe_move_slot(self) -> None:
        """When the wall clock enters a new recovery slot, move every client's recovery tokens, in steps
        of about RELOAD_STEP_SECONDS between queue polls (a million clients take seconds)."""
        if self._slot_move is None:
            slot = slot_of(time.time())
            if slot == self.table.slot:
                return
            self._slot_move = self.table.set_slot_steps(slot)
        deadline = time.monotonic() + RELOAD_STEP_SECONDS
        try:
            while True:
                next(self._slot_move)
                if time.monotonic() >= deadline:
                    return
        except StopIteration:
            self._slot_move = None

    def retire_expired(self) -> None:
        """Take out the old keys of rotations whose deadline has passed (the clients file stops listing
        them at the same time, so a reload agrees)."""
        for name in self.table.retire_expired(time.time()):
            self._by_ident = None
            log.info("key rotated client=%s: the old key's deadline passed, it no longer opens", name)

    def status(self, families: list[int]) -> dict[str, object]:
        return {
            "pid": os.getpid(), "queue": self.queue_num, "workers": self.workers,
            "ports": list(self.config.ports),
            "families": families, "clients": len(self.table.clients), "table_entries": len(self.table),
            "counts": dict(sorted(self.counts.items())), "reload_error": self.reload_error,
            "public_listeners": self.exposed, **(self.guard.status() if self.guard else {}),
            "unauth_modes": {f"ipv{f}": mode for f, mode in sorted(self.modes.items())},
        }

    def _accept_record(self, worker: int | None) -> AcceptRecord:
        def live(ident: str, name: str) -> bool:
            return name in self.table.clients and self.table.ident_of(name).hex() == ident

        return AcceptRecord(*self.state.accept_paths(worker), live)

    # --- main loop ---------------------------------------------------------------------------------
    def rule_config(self, family: int) -> RuleConfig:
        c = self.config
        chain = RuleConfig(self.queue_num, c.ports, c.mark).chain
        mode = host_unused_port_mode(family, chain) if c.unauth == "auto" else c.unauth
        return RuleConfig(
            self.queue_num, c.ports, c.mark, mode, c.syn_rate_per_second, c.syn_burst, c.prefix_v4,
            c.prefix_v6, workers=self.workers, accept_port=c.accept_port,
        )

    def run(self, ready: Callable[[str], None]) -> None:
        """Serve until SIGTERM/SIGINT. The rules stay installed when the daemon stops, in any way: the
        protected ports stay closed (only `stealth server rules remove` takes the rules out)."""
        with locked(self.state.run_lock, blocking=False):
            self.start()
            families = available_families()
            self.exposed = public_listeners(self.config.ports)
            if self.exposed:
                raise ConfigError(self.state.config_path, exposed_message(self.exposed))
            rules = {f: self.rule_config(f) for f in families}
            self.reset_families = {f for f, r in rules.items() if r.mode == "reset"}
            self.modes = {f: r.mode for f, r in rules.items()}
            listeners = open_listeners(self.config.accept_port, families)
            self.keys, keys_in = key_channel()
            queue = None
            if self.workers == 1:
                queue = Queue(self.queue_num, self.handle, self.on_error, self.commit)
            previous = self._install_signals()
            children: dict[int, int] = {}
            try:
                install(rules)  # until the workers bind their queues, SYNs are dropped: fail closed
                self.guard = Guard(rules, lambda: spawn(listeners, self._plan(), keys_in),
                                   self.state.config_path)
                self.state.write_status({**self.status(families), "running": True})
                self._open_good_list(rules[4].good_list)
                try:
                    if queue is None:
                        children = self._start_workers(families)
                    else:
                        self.guard.start_thread(RULE_CHECK_SECONDS)
                    ready(self._ready_line(rules))
                    if queue is not None:
                        self._loop(queue, families)
                    else:
                        self._supervise(children, families)
                finally:
                    if queue is not None:
                        queue.flush()
                    self._stop_workers(children)
                    if self.good_list_fd is not None:
                        os.close(self.good_list_fd)
                        self.good_list_fd = None
                    if self.guard is not None:
                        self.guard.stop()
            finally:
                if queue is not None:
                    queue.close()
                self.accepts.close()
                for sock in listeners:
                    sock.close()
                keys_in.close()
                self.keys.close()
                self.log.close()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self.state.write_status({**self.status(families), "running": False})

    def _plan(self) -> Plan:
        """Backends and sealed ports for the acceptor, from server.toml as it is now (a change there
        restarts the acceptor: sealing a port needs no daemon restart)."""
        try:
            c = self.state.load_config()
        except StealthError as e:
            log.error("%s; the acceptor keeps the settings the server started with", e)
            c = self.config
        return Plan({p: c.backend(p) for p in self.config.ports}, frozenset(c.sealed),
                    c.seal_deadline_ms / 1000)

    def _open_good_list(self, name: str) -> None:
        path = f"/proc/net/xt_recent/{name}"
        try:
            self.good_list_fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            log.warning("no rate-limit exemption list (%s): %s", path, e)

    def _ready_line(self, rules: dict[int, RuleConfig]) -> str:
        modes = ",".join(f"{'ipv4' if f == 4 else 'ipv6'}:{r.mode}" for f, r in rules.items())
        queues = rules[4].queue_spec.replace(":", "-")
        return (f"ready queue={queues} ports={','.join(map(str, self.config.ports))} "
                f"clients={len(self.table.clients)} unauth={modes} workers={self.workers}")

    def _watch(self) -> None:
        """About once a second: a public listener on a protected port makes every reject a drop; a
        changed server.toml may seal or unseal ports."""
        config_now = stamp(self.state.config_path)
        if config_now != self._config_stamp:
            self._config_stamp = config_now
            try:
                self.sealed = frozenset(self.state.load_config().sealed)
            except StealthError as e:
                log.error("%s; keeping the sealed ports as they were", e)
        exposed = public_listeners(self.config.ports)
        if exposed and exposed != self.exposed:
            log.error("%s; dropping every unauthenticated SYN until it is gone", exposed_message(exposed))
        self.exposed = exposed

    # --- several worker processes (--workers N, NFQUEUE --queue-balance) ---------------------------------
    def _start_workers(self, families: list[int]) -> dict[int, int]:
        """Fork one worker per queue; each binds its queue and reports over a pipe. Returns pid -> index."""
        children: dict[int, int] = {}
        for index in range(self.workers):
            pid, report = self._fork_worker(index, families)
            children[pid] = index
            if report != b"ok":
                self._stop_workers(children)
                raise StealthError(report.decode(errors="replace") or f"worker {index} died while starting")
        return children

    def _fork_worker(self, index: int, families: list[int]) -> tuple[int, bytes]:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code (and its rule cleanup)
            code = 1
            try:
                os.close(rfd)
                code = self._worker_main(index, wfd, families)
            except BaseException as e:  # noqa: BLE001
                log.error("worker %d failed: %s", index, e)
            finally:
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            return pid, r.read()

    def _worker_main(self, index: int, report_fd: int, families: list[int]) -> int:
        self.worker = index
        self.guard = None  # the parent checks the rules and runs the acceptor
        self.stop = False
        self.counts.clear()
        self.accepts = self._accept_record(index)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and tells us with SIGTERM
        try:
            queue = Queue(self.queue_num + index, self.handle, self.on_error, self.commit)
        except StealthError as e:
            os.write(report_fd, str(e).encode())
            os.close(report_fd)
            return 1
        os.write(report_fd, b"ok")
        os.close(report_fd)
        try:
            self._loop(queue, families)
            queue.flush()
        finally:
            queue.close()
            self.accepts.close()
        return 0

    def _supervise(self, children: dict[int, int], families: list[int]) -> None:
        """Parent: restart a worker that dies; publish the workers' summed counts in status.json."""
        next_status = next_watch = 0.0
        while not self.stop:
            time.sleep(0.2)
            if time.monotonic() >= next_watch:
                self._watch()
                if self.guard is not None:
                    self.guard.check()  # missing rules reinstalled, a dead acceptor restarted
                next_watch = time.monotonic() + RULE_CHECK_SECONDS
            for pid, index in list(children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    log.error("worker %d exited (status %d); restarting it", index, status)
                    del children[pid]
                    children.update(self._restart_worker(index, families))
            if self.reload_requested:
                self.reload_requested = False
                for pid in children:
                    os.kill(pid, signal.SIGHUP)
            if time.monotonic() >= next_status:
                self._publish_worker_status(families)
                next_status = time.monotonic() + STATUS_INTERVAL_SECONDS

    def _restart_worker(self, index: int, families: list[int]) -> dict[int, int]:
        with locked(self.state.counters_lock):  # what the other workers made durable so far
            self.load(self.log.read())
        pid, report = self._fork_worker(index, families)
        if report != b"ok":
            log.error("worker %d could not restart: %s", index, report.decode(errors="replace"))
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return {}
        return {pid: index}

    def _publish_worker_status(self, families: list[int]) -> None:
        counts: collections.Counter[str] = collections.Counter()
        for index in range(self.workers):
            try:
                doc = self.state.read_status(index)
            except StealthError:
                continue
            counts.update((doc or {}).get("counts", {}))
        self.counts = counts
        try:
            self.state.write_status({**self.status(families), "running": True})
        except StealthError as e:
            log.warning("cannot write status: %s", e)

    def _stop_workers(self, children: dict[int, int]) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        children.clear()

    def _loop(self, queue: Queue, families: list[int]) -> None:
        next_status = next_reload = next_watch = 0.0
        while not self.stop:
            busy = self._reload is not None or self._slot_move is not None or self.accepts.folding
            queue.poll(0 if busy else min(RELOAD_POLL_SECONDS, STATUS_INTERVAL_SECONDS) / 2)
            now = time.monotonic()
            if now >= next_watch:
                self._watch()
                next_watch = now + RULE_CHECK_SECONDS
            if self._reload is not None or self.reload_requested or now >= next_reload:
                self.maybe_reload()
                next_reload = now + RELOAD_POLL_SECONDS
            if self._reload is None:
                self.maybe_move_slot()
            if self._reload is None and (now >= next_status or self.accepts.folding):
                self.accepts.flush(RELOAD_STEP_SECONDS)  # a fold keeps the clients the table knows
            if now >= next_status:
                self.retire_expired()
                try:
                    self.state.write_status({**self.status(families), "running": True}, self.worker)
                except StealthError as e:
                    log.warning("cannot write status: %s", e)
                next_status = now + STATUS_INTERVAL_SECONDS
            self._log_suppressed(now)
        self._log_suppressed(time.monotonic(), final=True)

    def _install_signals(self) -> dict[int, "Callable[[int, FrameType | None], object] | int | None"]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop = True

        def hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested = True

        previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        for sig, fn in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
            previous[sig] = signal.signal(sig, fn)
        return previous
