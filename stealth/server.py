# Why: `stealth server run`, the daemon: one Worker (worker.py) plus what only the daemon does. It holds
# the run lock, installs the rules the config asks for (rules_plan.py), binds the queue (or forks and
# supervises N workers, supervisor.py), starts the acceptor under the rule guard (guard.py), says READY,
# and on SIGTERM/SIGINT gives every held packet its verdict and releases everything it opened. The rules
# stay when it stops, in any way: the protected ports stay closed (only `stealth server rules remove`
# takes them out), and until a queue is bound its SYNs are dropped: fail closed.
#
# Its life, as a table (NEXT) that run() follows and status.json reports:
#
#   NEW ──start()──> LOADED ──rules installed──> PROTECTING ──queue(s) bound, READY──> SERVING
#    │                 │                            │                                    │ SIGTERM/SIGINT
#    └─────────────────┴──────── an error ──────────┴───────────────> STOPPED <──────────┘
import contextlib
import enum
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from types import FrameType

from stealth.acceptor import Plan, open_listeners, spawn
from stealth.constants import RULE_CHECK_SECONDS
from stealth.errors import ConfigError, StealthError
from stealth.firewall import RuleConfig, available_families, install
from stealth.guard import Guard, public_listeners
from stealth.nfqueue import Queue
from stealth.packet_queue import PacketQueue, QueueFactory
from stealth.rules_plan import rules_for
from stealth.server_config import UnauthMode
from stealth.server_state import ServerState
from stealth.sessions import key_channel
from stealth.store import locked
from stealth.supervisor import Supervisor
from stealth.worker import Worker, exposed_message

log = logging.getLogger("stealth.server")


class Phase(enum.Enum):
    """Where the daemon is in its life (NEXT says where it may go next); status.json's "phase"."""

    NEW = "new"
    LOADED = "loaded"
    PROTECTING = "protecting"
    SERVING = "serving"
    STOPPED = "stopped"


NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.NEW: frozenset({Phase.LOADED, Phase.STOPPED}),
    Phase.LOADED: frozenset({Phase.PROTECTING, Phase.STOPPED}),
    Phase.PROTECTING: frozenset({Phase.SERVING, Phase.STOPPED}),
    Phase.SERVING: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}
Handlers = dict[int, "Callable[[int, FrameType | None], object] | int | None"]


class Server(Worker):
    """The daemon. run() serves until SIGTERM/SIGINT; the Worker's handle()/commit() serve its queue.
    `queue_factory` binds a queue (nfqueue.Queue; tests give queue_fake.FakeQueue)."""

    def __init__(self, state: ServerState, queue: int | None = None, workers: int = 1,
                 queue_factory: QueueFactory = Queue) -> None:
        super().__init__(state, queue, workers)
        self.queue_factory = queue_factory
        self.phase = Phase.NEW
        self.guard: Guard | None = None  # in the process that checks the rules (not in workers)

    def enter(self, phase: Phase) -> None:
        """Move to `phase`; RuntimeError for a move NEXT does not allow."""
        if phase not in NEXT[self.phase]:
            raise RuntimeError(f"daemon phase {self.phase.value} cannot go to {phase.value}")
        log.debug("phase %s -> %s", self.phase.value, phase.value)
        self.phase = phase

    def status(self, families: list[int]) -> dict[str, object]:
        """The worker's status.json document plus the daemon's phase and the rule guard's findings."""
        return {**super().status(families), "phase": self.phase.value,
                **(self.guard.status() if self.guard else {})}

    def run(self, ready: Callable[[str], None]) -> None:
        """Serve until SIGTERM/SIGINT; call `ready(line)` once the rules are in place and the queue(s)
        bound. Raises StealthError (ConfigError, FirewallError) when it cannot start; the rules it
        installed stay either way."""
        families: list[int] = []
        with locked(self.state.run_lock, blocking=False), contextlib.ExitStack() as stack:
            stack.callback(self._stopped)
            self.start()
            self.enter(Phase.LOADED)
            families += available_families()
            rules = self._rules(families)
            stack.enter_context(self._signals())
            stack.callback(self.journal.close)
            keys_in = self._open_key_channel(stack)
            listeners = open_listeners(self.config.accept_port, families)
            for sock in listeners:
                stack.callback(sock.close)
            stack.callback(self.accepts.close)
            queue = self._bind(stack, families) if self.workers == 1 else None
            if queue is None:
                stack.callback(self._publish_stopped, families)  # from here on, status says how it ended
            install(rules)  # until the workers bind their queues, SYNs are dropped: fail closed
            self.enter(Phase.PROTECTING)
            self.guard = Guard(rules, lambda: spawn(listeners, self._acceptor_plan(), keys_in),
                               self.state.config_path)
            stack.callback(self.guard.stop)
            self.publish(families)
            self._open_good_list(rules[4].good_list, stack)
            self._serve(queue, families, rules, ready)

    def _rules(self, families: list[int]) -> dict[int, RuleConfig]:
        """The rules to install; ConfigError while a service listens on a protected port's public
        address (it would answer what stealth must hide)."""
        self.exposed = public_listeners(self.config.ports)
        if self.exposed:
            raise ConfigError(self.state.config_path, exposed_message(self.exposed))
        rules = rules_for(self.config, self.queue_num, self.workers, families)
        self.reset_families = {f for f, r in rules.items() if r.mode is UnauthMode.RESET}
        self.modes = {f: str(r.mode) for f, r in rules.items()}
        return rules

    def _bind(self, stack: contextlib.ExitStack, families: list[int]) -> PacketQueue:
        """Bind this process's queue; once it is bound, the final status is written after it is closed."""
        queue = self.queue_factory(self.queue_num, self.handle, self.on_error, self.commit)
        stack.callback(self._publish_stopped, families)
        stack.callback(queue.close)
        return queue

    def _open_key_channel(self, stack: contextlib.ExitStack) -> socket.socket:
        keys, keys_in = key_channel()
        self.executor.keys = keys
        stack.callback(keys.close)
        stack.callback(keys_in.close)
        return keys_in

    def _serve(self, queue: PacketQueue | None, families: list[int], rules: dict[int, RuleConfig],
               ready: Callable[[str], None]) -> None:
        supervisor = Supervisor(self, families) if queue is None else None
        try:
            if supervisor is not None:
                supervisor.start()
            elif self.guard is not None:
                self.guard.start_thread(RULE_CHECK_SECONDS)
            self.enter(Phase.SERVING)
            ready(self._ready_line(rules))
            if supervisor is not None:
                supervisor.supervise()
            elif queue is not None:
                self.loop(queue, families)
        finally:
            if queue is not None:
                queue.flush()
            if supervisor is not None:
                supervisor.stop()

    def _stopped(self) -> None:
        if self.phase is not Phase.STOPPED:
            self.enter(Phase.STOPPED)

    def _publish_stopped(self, families: list[int]) -> None:
        self._stopped()
        self.state.write_status({**self.status(families), "running": False})

    def serve_as_worker(self, index: int, report_fd: int, families: list[int]) -> int:
        """In a forked worker: bind queue queue_num + index, report "ok" (or why not) on `report_fd`, and
        serve until SIGTERM. Returns the process's exit code."""
        self.worker = index
        self.guard = None  # the parent checks the rules and runs the acceptor
        self.stop = False
        self.counts.clear()
        self.executor.accepts = self.accept_record(index)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and tells us with SIGTERM
        try:
            queue = self.queue_factory(self.queue_num + index, self.handle, self.on_error, self.commit)
        except StealthError as e:
            os.write(report_fd, str(e).encode())
            os.close(report_fd)
            return 1
        os.write(report_fd, b"ok")
        os.close(report_fd)
        try:
            self.loop(queue, families)
            queue.flush()
        finally:
            queue.close()
            self.accepts.close()
        return 0

    def _acceptor_plan(self) -> Plan:
        """Backends and sealed ports for the acceptor, from server.toml as it is now (a change there
        restarts the acceptor: sealing a port needs no daemon restart)."""
        try:
            c = self.state.load_config()
        except StealthError as e:
            log.error("%s; the acceptor keeps the settings the server started with", e)
            c = self.config
        return Plan({p: c.backend(p) for p in self.config.ports}, frozenset(c.sealed),
                    c.seal_deadline_ms / 1000)

    def _open_good_list(self, name: str, stack: contextlib.ExitStack) -> None:
        """Open the SYN rate limit's exemption list, where each accepted source is added."""
        path = f"/proc/net/xt_recent/{name}"
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            log.warning("no rate-limit exemption list (%s): %s", path, e)
            return
        self.executor.good_list_fd = fd

        def close() -> None:
            self.executor.good_list_fd = None
            os.close(fd)

        stack.callback(close)

    def _ready_line(self, rules: dict[int, RuleConfig]) -> str:
        modes = ",".join(f"{'ipv4' if f == 4 else 'ipv6'}:{r.mode}" for f, r in rules.items())
        queues = rules[4].queue_spec.replace(":", "-")
        return (f"ready queue={queues} ports={','.join(map(str, self.config.ports))} "
                f"clients={self.table.client_count} unauth={modes} workers={self.workers}")

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT stop the loop, SIGHUP asks for a reload; the previous handlers come back."""
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop = True

        def hup(signum: int, frame: FrameType | None) -> None:
            self.sync.reload_requested = True

        previous: Handlers = {}
        for sig, fn in ((signal.SIGTERM, stop), (signal.SIGINT, stop), (signal.SIGHUP, hup)):
            previous[sig] = signal.signal(sig, fn)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
