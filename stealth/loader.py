# Why: a worker's token table must equal clients.jsonl at all times without ever stopping the queue. With
# a million clients a reload takes seconds, so it runs in steps of about RELOAD_STEP_SECONDS between queue
# polls, and so does moving every client's recovery tokens when the clock enters a new slot. A reload
# validates the whole file first, so a bad file changes nothing (the previous clients stay). The old keys
# of key rotations whose deadline passed are retired here too (core/rotation.py). `stealth inspect` and
# the benchmarks build their tables with the same functions.
import logging
import time
from collections.abc import Iterator

from stealth.checks import enrolled_twice
from stealth.constants import RELOAD_STEP_SECONDS
from stealth.core.recovery import slot_of
from stealth.core.table import TokenTable
from stealth.counterlog import CounterLog
from stealth.errors import ConfigError, StealthError
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState
from stealth.steps import run_for
from stealth.store import stamp

log = logging.getLogger("stealth.server")


def build_table(state: ServerState, config: ServerConfig, counters: dict[str, int]) -> TokenTable:
    """The token table of every enrolled client, sized once for all of them (W live + W spent tokens per
    client and port), from clients.jsonl streamed and the stored counters."""
    table = TokenTable(config.window)
    # sized once, up front: growing later re-inserts every token (seconds at a million clients)
    table.reserve(table.tokens_for(state.count_clients(), len(config.ports)))
    sync_table(table, state, config, counters)
    return table


def sync_table(table: TokenTable, state: ServerState, config: ServerConfig, counters: dict[str, int]) -> None:
    """sync_steps() in one go."""
    for _ in sync_steps(table, state, config, counters):
        pass


def sync_steps(
    table: TokenTable, state: ServerState, config: ServerConfig, counters: dict[str, int]
) -> Iterator[None]:
    """table.sync_steps() from clients.jsonl: every key that opens now (time.time()), at the higher of its
    stored counter and its admin floor. ConfigError for a file the table cannot take."""
    specs = state.iter_specs(config, time.time())
    try:
        yield from table.sync_steps(
            (spec, max(counters.get(spec.ident.hex(), 0), floor)) for spec, floor in specs)
    except ValueError as e:  # enrolled twice, too many distinct ports
        raise ConfigError(state.clients_path, str(e)) from None


def check_clients(state: ServerState, config: ServerConfig) -> None:
    """check_steps() in one go: ConfigError for a clients.jsonl the server must not load."""
    for _ in check_steps(state, config):
        pass


def check_steps(state: ServerState, config: ServerConfig, chunk: int = 2000) -> Iterator[None]:
    """Validate all of clients.jsonl without touching the table, so a bad reload keeps the old clients
    instead of leaving them half replaced (sync streams and changes the table as it reads)."""
    names: set[str] = set()
    for record in state.iter_records(config):
        if record.name in names:
            raise ConfigError(state.clients_path, enrolled_twice(record.name))
        names.add(record.name)
        if len(names) % chunk == 0:
            yield


def compact_journal(journal: CounterLog, table: TokenTable) -> None:
    """Fold the counter journal into a new snapshot: what is durable on disk, raised to the table's
    counters."""
    counters = journal.read()
    for ident, last in table.counters():
        if last > counters.get(ident, 0):
            counters[ident] = last
    journal.compact(sorted(counters.items()))


class ClientSync:
    """Keeps one worker's token table equal to clients.jsonl: the first load, stepped reloads when the
    file changes (or on request), stepped recovery-slot moves, and expired rotations. `generation` goes up
    whenever clients may have come or gone, for caches keyed by client."""

    def __init__(self, state: ServerState, config: ServerConfig, table: TokenTable,
                 journal: CounterLog) -> None:
        self.state = state
        self.config = config
        self.table = table
        self.journal = journal
        self.reload_requested = False
        self.reload_error: str | None = None
        self.generation = 0
        self._clients_stamp: tuple[int, int, int] | None = None
        self._reload: Iterator[None] | None = None  # a reload in progress, advanced between queue polls
        self._slot_move: Iterator[None] | None = None  # recovery tokens moving to a new slot, likewise

    @property
    def reloading(self) -> bool:
        """A reload is under way (its steps run between queue polls)."""
        return self._reload is not None

    @property
    def busy(self) -> bool:
        """Stepped work is waiting: the loop polls the queue without sleeping."""
        return self._reload is not None or self._slot_move is not None

    def start(self) -> None:
        """First load: repair and open the counter journal, build the table, and fold a long journal."""
        counters = self.journal.open()
        self.table.reserve(self.table.tokens_for(self.state.count_clients(), len(self.config.ports)))
        self.table.set_slot(slot_of(time.time()))  # before the clients: each gets its recovery tokens
        self.load(counters, validate=False)
        if self.journal.needs_compaction(len(self.table.clients)):
            compact_journal(self.journal, self.table)

    def load(self, counters: dict[str, int] | None = None, validate: bool = True) -> None:
        """(Re)load clients.jsonl into the table in one go (at start, and in the parent of workers)."""
        for _ in self._load_steps(counters, validate):
            pass

    def _load_steps(self, counters: dict[str, int] | None = None, validate: bool = True) -> Iterator[None]:
        """Known clients keep their in-memory counters (they are at least what is on disk); `counters`
        (from disk) matter for clients the table does not know yet. A reload validates the whole file
        first, so it is all or nothing (at start, a bad file stops the server anyway)."""
        clients_stamp = stamp(self.state.clients_path)
        if validate:
            yield from check_steps(self.state, self.config)
        yield from sync_steps(self.table, self.state, self.config, counters or {})
        self.generation += 1
        self._clients_stamp = clients_stamp

    def maybe_reload(self) -> None:
        """Start a reload when clients.jsonl changed (or on request), and advance a running one by about
        RELOAD_STEP_SECONDS of work."""
        if self._reload is None:
            if not self.reload_requested and stamp(self.state.clients_path) == self._clients_stamp:
                return
            self.reload_requested = False
            self._reload = self._load_steps()
        try:
            if not run_for(self._reload, RELOAD_STEP_SECONDS):
                return
            self._reload = None
        except StealthError as e:
            self._reload = None
            self._clients_stamp = stamp(self.state.clients_path)
            self.reload_error = str(e)
            log.error("reload failed, keeping the previous clients: %s", e)
            return
        self.reload_error = None
        log.info("reloaded: %d clients enrolled", self.table.client_count)

    def maybe_move_slot(self) -> None:
        """When the wall clock enters a new recovery slot, move every client's recovery tokens, in steps
        of about RELOAD_STEP_SECONDS between queue polls (a million clients take seconds)."""
        if self._reload is not None:
            return
        if self._slot_move is None:
            slot = slot_of(time.time())
            if slot == self.table.slot:
                return
            self._slot_move = self.table.set_slot_steps(slot)
        if run_for(self._slot_move, RELOAD_STEP_SECONDS):
            self._slot_move = None

    def retire_expired(self) -> None:
        """Take out the old keys of rotations whose deadline has passed (the clients file stops listing
        them at the same time, so a reload agrees)."""
        for name in self.table.retire_expired(time.time()):
            self.generation += 1
            log.info("key rotated client=%s: the old key's deadline passed, it no longer opens", name)
