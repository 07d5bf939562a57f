# Why: the executor of `stealth server run`. It wires the pure gate to the outside: NFQUEUE in, verdicts
# out, counters persisted durably *before* an accept verdict, firewall rules installed after the queue is
# bound and removed on SIGTERM/SIGINT, clients reloaded on SIGHUP or when clients.toml changes, drop
# counts published to status.json. Unauthenticated packets are counted, never logged above DEBUG.
import collections
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType

from stealth.constants import RELOAD_POLL_SECONDS, STATUS_INTERVAL_SECONDS
from stealth.core.gate import Gate, LogAccept, PersistCounter, Verdict
from stealth.core.packet import Reason
from stealth.core.table import TokenTable
from stealth.errors import StealthError
from stealth.firewall import RuleConfig, available_families, host_unused_port_mode, install, remove
from stealth.nfqueue import AfterCommit, Queue
from stealth.server_state import Enrolled, ServerConfig, ServerState
from stealth.store import locked

log = logging.getLogger("stealth.server")
NO_MARK = 0  # accept without setting a mark: the filter chain treats the packet as unauthenticated


def format_addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def build_table(config: ServerConfig, clients: dict[str, Enrolled], counters: dict[str, int]) -> TokenTable:
    table = TokenTable(config.window)
    sync_table(table, clients, counters)
    return table


def sync_table(table: TokenTable, clients: dict[str, Enrolled], counters: dict[str, int]) -> None:
    lasts = {n: max(counters.get(e.enrollment, 0), e.counter_floor) for n, e in clients.items()}
    table.sync([e.profile.spec() for e in clients.values()], lasts)


class Server:
    def __init__(self, state: ServerState, queue: int | None = None, keep_rules: bool = False) -> None:
        self.state = state
        self.config = state.load_config()
        self.queue_num = self.config.queue if queue is None else queue
        self.keep_rules = keep_rules
        self.counts: collections.Counter[str] = collections.Counter()
        self.clients: dict[str, Enrolled] = {}
        self.counters: dict[str, int] = {}
        self.table = TokenTable(self.config.window)
        self.gate = Gate(self.table)
        self.stop = False
        self.reload_requested = False
        self.reload_error: str | None = None
        self._clients_stamp: tuple[int, int, int] | None = None
        self.reset_families: set[int] = set()
        self._pending: list[PersistCounter | LogAccept] = []
        self._dirty = False
        self.good_list_fd: int | None = None

    # --- packet path -------------------------------------------------------------------------------
    def reject(self, payload: bytes) -> int | None:
        """Verdict for an unauthenticated packet: drop it, or (reset mode) pass it on unmarked to the
        filter chain, whose REJECT makes the kernel's own closed-port RST."""
        return NO_MARK if payload and (payload[0] >> 4) in self.reset_families else None

    def handle(self, payload: bytes) -> int | AfterCommit | None:
        decision = self.gate.receive(payload, time.monotonic())
        if decision.verdict is Verdict.DROP:
            self.counts[decision.reason] += 1
            return self.reject(payload)
        for command in decision.commands:
            if isinstance(command, PersistCounter):
                self.counters[self.clients[command.client].enrollment] = command.counter
                self._dirty = True
            self._pending.append(command)
        self.counts[decision.reason] += 1
        return AfterCommit(self.config.mark)  # every accept waits until its counter is durable

    def commit(self) -> bool:
        """Make the held knocks' counters durable with one write and fsync; then log them and exempt
        their sources from the rate limit. False (the knocks get dropped) when the write fails."""
        pending, self._pending = self._pending, []
        if self._dirty:
            try:
                self.state.save_counters(self.counters)
            except StealthError as e:
                log.error("cannot persist counters, dropping %d knock(s): %s", len(pending), e)
                self.counts[Reason.PERSIST_FAILED] += len(pending)
                return False
            self._dirty = False
        for command in pending:
            if isinstance(command, PersistCounter):
                self._remember_source(command)
            else:
                log.info(
                    "accept client=%s port=%d src=[%s]:%d counter=%d%s", command.client, command.dport,
                    format_addr(command.src), command.sport, command.counter,
                    " retransmit" if command.retransmit else "",
                )
        return True

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
        try:
            st = os.stat(self.state.clients_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def load(self) -> None:
        stamp = self._stamp()
        clients = self.state.load_clients()
        counters = self.state.load_counters()
        ids = {e.enrollment for e in clients.values()}
        # keep our in-memory counters (they are at least what is on disk) and forget revoked clients
        merged = {k: max(v, self.counters.get(k, 0)) for k, v in counters.items() if k in ids}
        merged.update({k: v for k, v in self.counters.items() if k in ids and k not in merged})
        sync_table(self.table, clients, merged)
        self.clients, self.counters, self._clients_stamp = clients, merged, stamp

    def maybe_reload(self) -> None:
        if not self.reload_requested and self._stamp() == self._clients_stamp:
            return
        self.reload_requested = False
        try:
            self.load()
        except StealthError as e:
            self._clients_stamp = self._stamp()
            self.reload_error = str(e)
            log.error("reload failed, keeping the previous clients: %s", e)
            return
        self.reload_error = None
        log.info("reloaded: %d clients enrolled", len(self.clients))

    def status(self, families: list[int]) -> dict[str, object]:
        return {
            "pid": os.getpid(), "queue": self.queue_num, "ports": list(self.config.ports),
            "families": families, "clients": sorted(self.clients), "table_entries": len(self.table),
            "counts": dict(sorted(self.counts.items())), "reload_error": self.reload_error,
        }

    # --- main loop ---------------------------------------------------------------------------------
    def rule_config(self, family: int) -> RuleConfig:
        c = self.config
        chain = RuleConfig(self.queue_num, c.ports, c.mark).chain
        mode = host_unused_port_mode(family, chain) if c.unauth == "auto" else c.unauth
        return RuleConfig(
            self.queue_num, c.ports, c.mark, mode, c.syn_rate_per_second, c.syn_burst, c.prefix_v4,
            c.prefix_v6,
        )

    def run(self, ready: Callable[[str], None]) -> None:
        with locked(self.state.run_lock, blocking=False):
            self.load()
            families = available_families()
            rules = {f: self.rule_config(f) for f in families}
            self.reset_families = {f for f, r in rules.items() if r.mode == "reset"}
            good_list = f"/proc/net/xt_recent/{rules[4].good_list}"
            queue = Queue(self.queue_num, self.handle, self.on_error, self.commit)
            previous = self._install_signals()
            try:
                install(rules)
                self.state.write_status({**self.status(families), "running": True})
                try:
                    self.good_list_fd = os.open(good_list, os.O_WRONLY)
                except OSError as e:
                    log.warning("no rate-limit exemption list (%s): %s", good_list, e)
                try:
                    modes = ",".join(f"{'ipv4' if f == 4 else 'ipv6'}:{r.mode}" for f, r in rules.items())
                    ready(
                        f"ready queue={self.queue_num} ports={','.join(map(str, self.config.ports))} "
                        f"clients={len(self.clients)} unauth={modes}"
                    )
                    self._loop(queue, families)
                finally:
                    queue.flush()
                    if self.good_list_fd is not None:
                        os.close(self.good_list_fd)
                        self.good_list_fd = None
                    if not self.keep_rules:
                        remove(rules)
            finally:
                queue.close()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self.state.write_status({**self.status(families), "running": False})

    def _loop(self, queue: Queue, families: list[int]) -> None:
        next_status = next_reload = 0.0
        while not self.stop:
            queue.poll(min(RELOAD_POLL_SECONDS, STATUS_INTERVAL_SECONDS) / 2)
            now = time.monotonic()
            if self.reload_requested or now >= next_reload:
                self.maybe_reload()
                next_reload = now + RELOAD_POLL_SECONDS
            if now >= next_status:
                try:
                    self.state.write_status({**self.status(families), "running": True})
                except StealthError as e:
                    log.warning("cannot write status: %s", e)
                next_status = now + STATUS_INTERVAL_SECONDS

    def _install_signals(self) -> dict[int, "Callable[[int, FrameType | None], object] | int | None"]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop = True

        def hup(signum: int, frame: FrameType | None) -> None:
            self.reload_requested = True

        previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}
        for sig, fn in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
            previous[sig] = signal.signal(sig, fn)
        return previous
