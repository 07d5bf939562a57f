# Why: per-packet work must be one dict lookup, not a loop of MACs over a window (DESIGN §2.10). The
# table holds, for every enrolled client and protected port, the wire image (ISN, source port) of its next
# W counters, plus the last W spent ones so replays and exact retransmissions are recognised. It is the
# only holder of replay state: a counter at or below a client's accepted counter never passes again.
from collections.abc import Iterable
from dataclasses import dataclass, field

from stealth.constants import COUNTER_MAX, DEFAULT_WINDOW, MAX_WINDOW
from stealth.core.secret import Secret
from stealth.core.token import Binding, wire

_PORTLESS = 1 << 64


def port_key(dport: int, isn: int, sport: int) -> int:
    return (dport << 48) | (isn << 16) | sport


def portless_key(dport: int, isn: int) -> int:
    return _PORTLESS | (dport << 32) | isn


@dataclass(frozen=True)
class ClientSpec:
    """An enrolled client as the server sees it."""

    name: str
    key: Secret = field(repr=False)
    binding: Binding
    ports: tuple[int, ...]


@dataclass(slots=True)
class Accepted:
    """The connection an accepted token opened: retransmissions of exactly this SYN may pass."""

    src: bytes
    dst: bytes
    sport: int
    at: float
    tsval: int | None


@dataclass(slots=True)
class Entry:
    """One (client, counter, port) token in the table. The session key is derived only on accept."""

    client: "ClientState"
    counter: int
    dport: int
    spent: bool = False
    accepted: Accepted | None = None


@dataclass
class ClientState:
    spec: ClientSpec
    last: int  # highest accepted counter; counters last+1 .. last+W are live
    keys: dict[int, list[int]] = field(default_factory=dict)  # counter -> table keys


class TokenTable:
    """Live and recently spent tokens of all clients, keyed by their wire image."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be 1..{MAX_WINDOW}")
        self.window = window
        self.entries: dict[int, Entry] = {}
        self.clients: dict[str, ClientState] = {}
        self.portless_clients = 0

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, dport: int, isn: int, sport: int) -> Entry | None:
        entry = self.entries.get(port_key(dport, isn, sport))
        if entry is None and self.portless_clients:
            entry = self.entries.get(portless_key(dport, isn))
        return entry

    def add(self, spec: ClientSpec, last: int) -> None:
        """Enroll (or re-enroll) a client whose highest accepted counter is `last`."""
        if spec.name in self.clients:
            self.remove(spec.name)
        state = ClientState(spec, last)
        self.clients[spec.name] = state
        if not spec.binding.port_bits:
            self.portless_clients += 1
        self._fill(state, max(0, last - self.window + 1), spent_below=last + 1)

    def remove(self, name: str) -> None:
        state = self.clients.pop(name, None)
        if state is None:
            return
        if not state.spec.binding.port_bits:
            self.portless_clients -= 1
        for keys in state.keys.values():
            for k in keys:
                self.entries.pop(k, None)
        state.keys.clear()

    def sync(self, specs: Iterable[ClientSpec], lasts: dict[str, int]) -> None:
        """Make the enrolled set equal `specs`. Known clients keep their in-memory counter if higher."""
        wanted = {s.name: s for s in specs}
        for name in list(self.clients):
            if name not in wanted:
                self.remove(name)
        for name, spec in wanted.items():
            current = self.clients.get(name)
            last = lasts.get(name, 0)
            if current is not None:
                if current.spec == spec and current.last >= last:
                    continue
                last = max(last, current.last)
            self.add(spec, last)

    def consume(self, entry: Entry, accepted: Accepted) -> int:
        """Spend entry's counter and every lower one; refill the window. Returns the new last counter."""
        state = entry.client
        counter = entry.counter
        assert not entry.spent and counter > state.last
        entry.accepted = accepted
        old_last = state.last
        state.last = counter
        for c in range(old_last + 1, counter + 1):
            for k in state.keys.get(c, ()):
                self.entries[k].spent = True
        for c in [c for c in state.keys if c <= counter - self.window]:
            for k in state.keys.pop(c):
                self.entries.pop(k, None)
        self._fill(state, old_last + self.window + 1, spent_below=counter + 1)
        return counter

    def _fill(self, state: ClientState, start: int, spent_below: int) -> None:
        spec = state.spec
        stop = min(state.last + self.window, COUNTER_MAX)
        for counter in range(max(start, 1), stop + 1):
            if counter in state.keys:
                continue
            keys = []
            for dport in spec.ports:
                isn, sport = wire(spec.key, spec.binding, dport, counter)
                k = portless_key(dport, isn) if sport is None else port_key(dport, isn, sport)
                if k in self.entries:  # a 2^-46 collision with another client: first one keeps it
                    continue
                self.entries[k] = Entry(state, counter, dport, spent=counter < spent_below)
                keys.append(k)
            state.keys[counter] = keys
