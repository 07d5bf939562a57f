# Why: the rotation rule of core/rotation.py, checked against an independent model. Random runs of
# knocks with either key, clock ticks, reloads (what the server does when clients.jsonl changes or at
# start: the clients file's specs at the current time, at the stored counters) and folds (an admin
# command rewriting the finished record) drive the real token table and gate; after every step the
# gate must accept exactly what the model says: the old key only before the deadline and before the
# new key's first accepted knock, each key only within its own window, no counter twice.
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from stealth.clients_file import ClientRecord, PendingRotation
from stealth.core.gate import Gate, LogAccept, Verdict
from stealth.core.rotation import client_name, old_key_live, predecessor_name, successor_name
from stealth.core.table import TokenTable
from stealth.core.token import Binding, derive
from tests.conftest import scaled
from tests.syns import SERVER_ID, key_of, knock_syn, sync

WINDOW = 4
UNTIL_S = 100
OLD_ID, NEW_ID = "00000000000000a1", "00000000000000b2"
BINDING = Binding(SERVER_ID)
ROTATING = ClientRecord("alice", key_of(1), OLD_ID, (22,),
                        rotation=PendingRotation(key_of(2), NEW_ID, UNTIL_S))


@dataclass
class Model:
    now: int = 0
    last: dict[str, int] = field(default_factory=lambda: {"old": 0, "new": 0})
    folded: bool = False

    def old_open(self) -> bool:
        return not self.folded and old_key_live(UNTIL_S, self.now, self.last["new"])

    def opens(self, which: str, counter: int) -> bool:
        live = which == "new" or self.old_open()
        return live and self.last[which] < counter <= self.last[which] + WINDOW


def counters(model: Model) -> dict[str, int]:
    """What the server's counter files hold: every accepted counter is durable before its verdict."""
    return {OLD_ID: model.last["old"], NEW_ID: model.last["new"]}


def reload(table: TokenTable, model: Model, stored: bool) -> None:
    """The server's sync: the clients file's specs now, at the stored counters (at start) or at none
    (a reload of a running server: the table's own counters are at least the stored ones)."""
    record = ROTATING.settle(counters(model), model.now) if model.folded else ROTATING
    found = counters(model) if stored else {}
    sync(table, ((spec, max(found.get(spec.ident.hex(), 0), floor))
               for spec, floor in record.specs(BINDING, model.now)))


steps = st.lists(st.one_of(
    st.tuples(st.just("knock"), st.sampled_from(["old", "new"]), st.integers(1, 2 * WINDOW)),
    st.tuples(st.just("tick"), st.integers(1, 60)),
    st.tuples(st.just("reload"), st.booleans()),
    st.tuples(st.just("fold")),
), max_size=40)


@settings(max_examples=scaled(300))
@given(steps)
def test_the_table_follows_the_rotation_rule(run: list[tuple[object, ...]]) -> None:
    model = Model()
    table = TokenTable(WINDOW)
    reload(table, model, stored=True)
    gate = Gate(table)
    keys = {"old": ROTATING.key, "new": ROTATING.rotation.key if ROTATING.rotation else None}
    for step in run:
        if step[0] == "knock":
            which, counter = str(step[1]), int(str(step[2]))
            key = keys[which]
            assert key is not None
            expected = model.opens(which, counter)
            retires = which == "new" and model.old_open()
            decision = gate.receive(knock_syn(derive(key, BINDING, 22, counter)), float(model.now))
            assert (decision.verdict is Verdict.ACCEPT) == expected, (step, model)
            if expected:
                model.last[which] = counter
                (log,) = [c for c in decision.commands if isinstance(c, LogAccept)]
                assert log.retired == ("alice" if retires else None)
        elif step[0] == "tick":
            model.now += int(str(step[1]))
            table.retire_expired(model.now)
        elif step[0] == "reload":
            reload(table, model, stored=bool(step[1]))
        elif not model.old_open():  # an admin command folds a finished rotation, and only that
            model.folded = True
            reload(table, model, stored=False)
        assert table.client_count == 1, "one client, whichever of its keys are enrolled"
    names = set(table.clients)
    assert names <= {"alice", successor_name("alice")}
    assert ("alice" in names) == (model.folded or model.old_open())


def test_successor_names_never_collide_with_client_names() -> None:
    assert successor_name("alice") == "alice/next"
    assert predecessor_name("alice/next") == "alice" and predecessor_name("alice") is None
    assert client_name("alice/next") == client_name("alice") == "alice"
