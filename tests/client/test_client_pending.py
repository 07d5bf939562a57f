# Why: the client's half of "nothing spent on silence" and recovery is a small state machine over its
# counter file: which knock a run sends (the pending one while young, new counters within what it can
# know of the window, the recovery token, the probe after an unanswered recovery knock), and how the
# file records a claim, an answer, a refusal and a recovery. Driven here with a fake clock; the
# privileged tests (tests/e2e/test_lockout.py) show the same on the wire.
from pathlib import Path

from stealth_connect.connect import RECOVER_AFTER_UNANSWERED, Attempt, _after_refusal, _candidates
from stealth_connect.counter import (
    CounterState,
    claim,
    initial_image,
    mark_pending,
    parse,
    read_counter,
    record_recovery,
    record_refused,
    record_success,
    take_counter,
)

from stealth.constants import PENDING_KNOCK_SECONDS
from stealth.core.recovery import recovery_base, recovery_counter, slot_of
from stealth.core.secret import Secret
from stealth.profile import Profile

PROF = Profile(name="p", server_id="s", key=Secret(bytes(32)), ports=(22,))
NOW = 1_764_600_123.0
SLOT = slot_of(NOW)


def test_a_pending_knock_is_sent_again_while_young_then_the_next_counter() -> None:
    st = CounterState(last_used=5, last_ok=4, pending=5, pending_since=NOW)
    assert _candidates(PROF, st, NOW + 1)[0] == ("again", 5)
    assert _candidates(PROF, st, NOW + PENDING_KNOCK_SECONDS - 0.1)[0] == ("again", 5)
    later = _candidates(PROF, st, NOW + PENDING_KNOCK_SECONDS)
    assert later[0] == ("new", 6) and later[-1] == ("recovery", recovery_counter(SLOT))


def test_past_what_it_can_know_of_the_window_the_client_recovers() -> None:
    st = CounterState(last_used=4 + RECOVER_AFTER_UNANSWERED, last_ok=4)
    assert _candidates(PROF, st, NOW) == [("recovery", recovery_counter(SLOT))]
    # that recovery knock went unanswered: probe the base's first counter, once
    sent = CounterState(st.last_used, st.last_ok, recovery_counter(SLOT), NOW)
    assert _candidates(PROF, sent, NOW + 30) == [("new", recovery_base(SLOT) + 1),
                                                 ("recovery", recovery_counter(SLOT))]
    probed = CounterState(recovery_base(SLOT) + 1, st.last_ok, recovery_base(SLOT) + 1, NOW + 30)
    assert _candidates(PROF, probed, NOW + 60) == [("recovery", recovery_counter(SLOT))]


def test_counters_still_in_flight_are_not_unanswered_ones() -> None:
    """Four concurrent runs have claimed four counters a moment ago: no reason for a recovery knock,
    which would spend the others' counters while their SYNs wait in a busy server's queue."""
    busy = CounterState(last_used=8, last_ok=4, pending=8, pending_since=NOW)
    assert _candidates(PROF, busy, NOW + 1)[:2] == [("again", 8), ("new", 9)]
    assert _candidates(PROF, busy, NOW + PENDING_KNOCK_SECONDS) == [("recovery", recovery_counter(SLOT))]


def test_new_counters_stay_within_what_the_client_knows_of_the_window() -> None:
    st = CounterState(last_used=10, last_ok=9)
    news = [c for kind, c in _candidates(PROF, st, NOW) if kind == "new"]
    assert news[0] == 11 and max(news) <= 9 + PROF.window


def test_after_an_rst() -> None:
    st = CounterState(last_used=7, last_ok=6)

    def refused(kind: str, counter: int, slot: int = 0) -> Attempt:
        return Attempt(None, None, kind, slot)  # type: ignore[arg-type]

    assert _after_refusal(PROF, refused("again", 7), st, NOW)[0] == ("new", 8)
    assert _after_refusal(PROF, refused("new", 7), st, NOW) == [("recovery", recovery_counter(SLOT))]
    assert _after_refusal(PROF, refused("recovery", 0, SLOT), st, NOW) == [("new", recovery_base(SLOT) + 1)]
    moved = CounterState(recovery_base(SLOT) + 3, recovery_base(SLOT) + 3)
    assert _after_refusal(PROF, refused("recovery", 0, SLOT), moved, NOW) == []


def test_the_counter_file_records_claims_answers_refusals_and_recoveries(tmp_path: Path) -> None:
    path = tmp_path / "k.ctr"
    assert take_counter(path) == 1
    assert claim(path, 2, NOW, PENDING_KNOCK_SECONDS)
    st = read_counter(path)
    assert (st.last_used, st.pending, st.pending_since) == (2, 2, NOW)
    assert claim(path, 2, NOW + 5, PENDING_KNOCK_SECONDS)  # the same knock again: nothing written
    assert not claim(path, 2, NOW + PENDING_KNOCK_SECONDS, PENDING_KNOCK_SECONDS)  # too old
    assert not claim(path, 1, NOW, PENDING_KNOCK_SECONDS)  # never a counter below the last used
    assert claim(path, 9, NOW, PENDING_KNOCK_SECONDS)  # a jump (busy ports skipped): both slots
    record_refused(path, 9)
    assert read_counter(path).pending == 0
    record_success(path, 9)
    assert read_counter(path) == CounterState(9, 9)
    mark_pending(path, recovery_counter(SLOT), NOW)
    assert read_counter(path).pending == recovery_counter(SLOT)
    record_recovery(path, recovery_base(SLOT))
    assert read_counter(path) == CounterState(recovery_base(SLOT), recovery_base(SLOT))


def test_a_jump_survives_a_torn_newer_slot(tmp_path: Path) -> None:
    """After a jump both slots hold it: damage to the newer one still never yields a lower counter."""
    path = tmp_path / "k.ctr"
    take_counter(path)
    assert claim(path, 500, NOW, PENDING_KNOCK_SECONDS)
    image = bytearray(path.read_bytes())
    cur = parse(path, bytes(image))
    bad = 0 if cur.target == 4096 else 4096  # the slot written last
    image[bad : bad + 8] = b"garbage!"
    assert parse(path, bytes(image)).state.last_used >= 500


def test_a_version_1_answers_block_is_read_and_upgraded(tmp_path: Path) -> None:
    import struct
    import zlib

    path = tmp_path / "k.ctr"
    image = bytearray(initial_image(CounterState(7, 0)))
    body = struct.pack("!8sQ", b"stlok001", 6)
    record = body + struct.pack("!I", zlib.crc32(body))
    image[2 * 4096 : 2 * 4096 + len(record)] = record
    path.write_bytes(bytes(image))
    path.chmod(0o600)
    assert read_counter(path) == CounterState(7, 6)  # last_ok from version 1, nothing pending
    assert claim(path, 8, NOW, PENDING_KNOCK_SECONDS)
    assert read_counter(path) == CounterState(8, 6, 8, NOW)  # now written as version 2


def test_tuple_in_use_finds_connections_and_time_wait_exactly() -> None:
    """The exact sock_diag lookup behind the client's busy-port check, on loopback of this host."""
    import socket
    import time

    from stealth_connect.syn import tuple_in_use

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    client = socket.socket()
    client.bind(("127.0.0.1", 0))
    sport = client.getsockname()[1]
    client.connect(("127.0.0.1", port))
    assert tuple_in_use(socket.AF_INET, "127.0.0.1", port, sport)
    assert not tuple_in_use(socket.AF_INET, "127.0.0.1", port, sport ^ 1)
    conn, _ = srv.accept()
    client.close()  # the client closes first: its side of the tuple goes to TIME_WAIT
    conn.close()
    time.sleep(0.1)
    assert tuple_in_use(socket.AF_INET, "127.0.0.1", port, sport)
    srv.close()
