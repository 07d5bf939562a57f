# Why: the token table is a hand-made open-addressing hash table (for memory at 1M clients); these tests
# hold it to a plain model: after any sequence of enrolments, accepts, recoveries, slot moves, resyncs
# and revocations, exactly the tokens of counters last-W+1 .. last+W of each enrolled client, and its
# recovery tokens of the slots around the table's slot, are found, with the right owner, counter and
# spent flag, and nothing else is. The probing and backward-shift deletion are also checked
# directly, including runs that wrap around the end of the array.
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stealth.core.recovery import live_slots, recovery_base, recovery_counter
from stealth.core.secret import Secret
from stealth.core.slots import CBITS
from stealth.core.table import ClientSpec, TokenTable
from stealth.core.token import Binding, wire
from tests.syns import sync

PORTS = (22, 443)


def spec(name: str, seed: int, port_bits: bool = True, ports: tuple[int, ...] = PORTS) -> ClientSpec:
    key = Secret(random.Random(seed).randbytes(32))  # noqa: S311 -- reproducible test keys
    return ClientSpec(name, key, Binding("table-test", port_bits), ports, ident=seed.to_bytes(8, "big"))


S0 = 2_900_000  # a recovery slot of about now


def check(table: TokenTable, model: dict[str, tuple[ClientSpec, int]]) -> None:
    w = table.window
    expected = 0
    for name, (s, last) in model.items():
        expected += check_recovery(table, name, s, last)
        assert table.clients[name].last == last
        assert table.ident_of(name) == s.ident
        for dport in s.ports:
            for counter in range(max(1, last - 2 * w), last + 2 * w + 1):
                isn, sport = wire(s.key, s.binding, dport, counter)
                e = table.lookup(dport, isn, sport if sport is not None else 40000)
                if last - w < counter <= last + w:
                    expected += 1
                    assert e is not None, (name, counter, last)
                    assert (e.name, e.counter, e.dport, e.spent) == (name, counter, dport, counter <= last)
                else:
                    assert e is None, (name, counter, last)
    assert len(table) == expected
    assert set(table.clients) == set(model)


def check_recovery(table: TokenTable, name: str, s: ClientSpec, last: int) -> int:
    """The client's recovery tokens: those of the table's slot and its neighbours, spent while their base
    is at or below `last`; none of the slots beyond. Returns how many there are."""
    if table.slot is None:
        return 0
    live = live_slots(table.slot)
    found = 0
    for dport in s.ports:
        for slot in range(live.start - 2, live.stop + 2):
            isn, sport = wire(s.key, s.binding, dport, recovery_counter(slot))
            e = table.lookup(dport, isn, sport if sport is not None else 40000)
            if slot in live:
                found += 1
                assert e is not None and e.recovery, (name, slot)
                spent = recovery_base(slot) <= last
                assert (e.name, e.counter, e.spent) == (name, recovery_counter(slot), spent)
            else:
                assert e is None, (name, slot)
    return found


OPS = st.lists(
    st.tuples(st.sampled_from(["add", "accept", "advance", "remove", "rekey", "recover", "slot"]),
              st.integers(0, 5), st.integers(0, 40)),
    max_size=30,
)


@given(ops=OPS, window=st.sampled_from([1, 3, 16]), with_slot=st.booleans())
def test_table_matches_a_model(ops: list[tuple[str, int, int]], window: int, with_slot: bool) -> None:
    table = TokenTable(window)
    if with_slot:
        table.set_slot(S0)
    model: dict[str, tuple[ClientSpec, int]] = {}
    for op, who, n in ops:
        name = f"c{who}"
        if op == "add" or (op == "rekey" and name in model):
            s = spec(name, who * 1000 + n if op == "rekey" else who, port_bits=who % 3 != 0)
            last = max(n, model[name][1]) if name in model else n
            sync(table, [*((v[0], v[1]) for k, v in model.items() if k != name), (s, last)])
            model[name] = (s, last)
        elif op == "accept" and name in model:
            s, last = model[name]
            counter = last + 1 + n % window
            isn, sport = wire(s.key, s.binding, s.ports[0], counter)
            e = table.lookup(s.ports[0], isn, sport if sport is not None else 40000)
            assert e is not None and not e.spent
            assert table.consume(e) == counter
            model[name] = (s, counter)
        elif op == "recover" and name in model and table.slot is not None:
            s, last = model[name]
            slot = live_slots(table.slot)[n % 3]
            isn, sport = wire(s.key, s.binding, s.ports[-1], recovery_counter(slot))
            e = table.lookup(s.ports[-1], isn, sport if sport is not None else 40000)
            assert e is not None and e.recovery and e.spent == (recovery_base(slot) <= last)
            if not e.spent:
                assert table.consume(e) == recovery_base(slot)
                model[name] = (s, recovery_base(slot))
        elif op == "slot":
            table.set_slot((table.slot or S0) + n % 4)
        elif op == "advance" and name in model:
            s, last = model[name]
            table.advance(name, last + n)
            model[name] = (s, last + n)
        elif op == "remove":
            table.remove(name)
            model.pop(name, None)
        check(table, model)


def test_large_window_and_counter_low_bits() -> None:
    """The slot keeps 11 low counter bits; with W=1024 the live+spent span is exactly 2048 counters."""
    table = TokenTable(1024)
    s = spec("big", 7, ports=(22,))
    table.add(s, 5000)
    for counter in (5000 - 1023, 5000, 5001, 5000 + 1024):
        isn, sport = wire(s.key, s.binding, 22, counter)
        e = table.lookup(22, isn, sport or 0)
        assert e is not None and e.counter == counter and e.spent == (counter <= 5000)
    isn, sport = wire(s.key, s.binding, 22, 5000 + 1025)
    assert table.lookup(22, isn, sport or 0) is None


def test_probe_runs_wrap_and_deletion_shifts_back() -> None:
    """Words crafted to share home slots at the end of the array: every survivor stays findable after
    each deletion, in any order."""
    table = TokenTable(1)
    cap = table.cap
    rng = random.Random(3)  # noqa: S311 -- a reproducible deletion order
    # ISNs whose home is one of the last three slots, so runs wrap to the start
    homes = [cap - 3, cap - 1, cap - 1, cap - 2, 0, cap - 1, 1]
    words = []
    for n, home in enumerate(homes):
        isn = -(-(home << 32) // cap)  # smallest ISN with this home
        assert (isn * cap) >> 32 == home
        tag = (0 << 49) | (isn << 17) | (2 * (n + 1))
        words.append(tag << CBITS | n)
    for n, word in enumerate(words):
        assert table._put(word, n)
    assert not table._put(words[0] ^ 1, 99), "a taken tag is never inserted twice"
    for order in range(20):
        t2 = TokenTable(1)
        for n, word in enumerate(words):
            t2._put(word, n)
        doomed = words[:]
        rng.shuffle(doomed)
        alive = set(words)
        for word in doomed:
            i = t2._find(word >> CBITS)
            assert i >= 0 and t2.slots[i] == word
            t2._delete(i)
            alive.discard(word)
            for other in alive:
                j = t2._find(other >> CBITS)
                assert j >= 0 and t2.slots[j] == other and t2.owner[j] == words.index(other), order
            assert t2._find(word >> CBITS) == -1
        assert len(t2) == 0 and not any(t2.slots)


def test_growth_keeps_every_token() -> None:
    table = TokenTable(16)
    cap = table.cap
    model = {}
    for n in range(cap // 16):  # enough clients to pass the load limit more than once
        s = spec(f"g{n}", n, ports=(22,))
        table.add(s, n % 5)
        model[s.name] = (s, n % 5)
    assert table.cap > cap
    check(table, model)


def test_reserve_and_bad_input() -> None:
    table = TokenTable(16)
    table.reserve(table.tokens_for(1000, 1))
    assert table.cap >= 32000 / 0.7
    with pytest.raises(ValueError, match="ident"):
        table.add(ClientSpec("x", Secret(bytes(32)), Binding("s"), (22,), ident=b"abc"), 0)
    with pytest.raises(ValueError, match="ports"):
        table.add(ClientSpec("y", Secret(bytes(32)), Binding("s"), tuple(range(1, 18))), 0)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_a_client_key_is_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenTable(4).add(ClientSpec("k", Secret(bytes(size)), Binding("s"), (22,)), 0)


def test_revoked_key_is_wiped_and_slot_reused() -> None:
    table = TokenTable(4)
    a = spec("a", 1)
    table.add(a, 0)
    index = table.index["a"]
    table.remove("a")
    assert a.key.value not in bytes(table._keys)
    b = spec("b", 2)
    table.add(b, 3)
    assert table.index["b"] == index
    check(table, {"b": (b, 3)})


def test_revoked_keys_keep_their_tokens_keyless_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A revoked key's live tokens stay (so its knocks are told from junk), without its key, for at most
    MAX_REVOKED_KEYS keys; beyond the cap a revoked key is gone entirely; a restored record of the same
    ident takes its tokens back."""
    import stealth.core.table

    monkeypatch.setattr(stealth.core.table, "MAX_REVOKED_KEYS", 2)
    binding = Binding("cap")
    specs = [ClientSpec(f"c{i}", Secret(bytes([i + 1]) * 32), binding, (22,), bytes([i + 1]) * 8)
             for i in range(3)]
    table = TokenTable(4)
    for s in specs:
        table.add(s, 0)
    first = [wire(s.key, binding, 22, 1) for s in specs]
    sync(table, [])
    assert not table.clients
    found = [table.lookup(22, isn, sport or 0) for isn, sport in first]
    kept = [e for e in found if e is not None]
    assert len(kept) == 2 and all(table.is_revoked(e.index) for e in kept)
    assert all(table.spec_of(e.index).key.value == bytes(32) for e in kept), "no revoked key stays"
    restored = next(s for s, e in zip(specs, found, strict=True) if e is not None)
    table.add(restored, 0)
    isn, sport = wire(restored.key, binding, 22, 1)
    entry = table.lookup(22, isn, sport or 0)
    assert entry is not None and not table.is_revoked(entry.index) and entry.name == restored.name
