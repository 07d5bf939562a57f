# Why: key rotation must never lock a client out and never leave an old key open longer than promised.
# These tests drive the real Server (its reload, commit and clock-driven retirement; no NFQUEUE needed)
# against the files `stealth server rotate` writes, and attack the promise: the old key after the new
# one was used, after the deadline, after a crash, after the record was folded; the new key's spent
# counters after that fold; an earlier rotation's unused key; a revoked client in the middle of one.
import logging
import time
from pathlib import Path

import pytest

from stealth.core.packet import Reason
from stealth.core.token import derive
from stealth.packet_queue import AfterCommit
from stealth.profile import Profile
from stealth.server import Server
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState
from stealth.status import status_doc
from tests.syns import knock_syn

T0 = 2_000_000_000.0
DAY_S = 86400


def knock(profile: Profile, counter: int) -> bytes:
    return knock_syn(derive(profile.key, profile.binding, 22, counter))


def accepted(srv: Server, payload: bytes) -> bool:
    verdict = srv.handle(payload)
    return isinstance(verdict, AfterCommit) and srv.commit() == [True]


class Clock:
    """time.time() for the daemon and the admin commands, moved by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T0
        monkeypatch.setattr(time, "time", lambda: self.now)  # the one clock the loader and admin read


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def state(tmp_path: Path) -> ServerState:
    state = ServerState(tmp_path / "state")
    state.init(ServerConfig("rotate", (22,)))
    return state


def started(state: ServerState) -> Server:
    srv = Server(state)
    srv.start()
    return srv


def reload(srv: Server) -> None:
    srv.sync.reload_requested = True
    srv.maybe_reload()
    while srv.sync.reloading:
        srv.maybe_reload()
    assert srv.reload_error is None


def test_both_keys_open_until_the_new_one_is_used(
    state: ServerState, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    old = state.add_client("alice", (22,))
    srv = started(state)
    assert accepted(srv, knock(old, 1))
    new, _, previous = state.rotate("alice", DAY_S, clock.now)
    assert previous is None and new.key != old.key and new.name == "alice"
    reload(srv)
    assert accepted(srv, knock(old, 2)), "the old key still opens during the overlap"
    assert accepted(srv, knock(old, 3))
    caplog.set_level(logging.INFO, "stealth.server")
    assert accepted(srv, knock(new, 1)), "the new key opens from counter 1: its own counter"
    assert "key rotated client=alice: its new key was used" in caplog.text
    assert not accepted(srv, knock(old, 4)), "the new key's first knock ends the old key at once"
    assert srv.counts[Reason.REVOKED] == 1, "and it is logged as a revoked key's knock"
    assert not accepted(srv, knock(new, 1)), "a new-key token is spent like any other"
    assert srv.counts[Reason.REPLAY] == 1
    assert accepted(srv, knock(new, 2))
    reload(srv)
    assert not accepted(srv, knock(old, 5)), "a reload does not bring the old key back"
    restarted = started(state)
    assert not accepted(restarted, knock(old, 6)), "nor a restart after a crash (the counter decides)"
    assert not accepted(restarted, knock(new, 2))
    assert accepted(restarted, knock(new, 3))


def test_the_deadline_ends_the_old_key_while_running_and_after_a_restart(
    state: ServerState, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    old = state.add_client("alice", (22,))
    srv = started(state)
    new, _, _ = state.rotate("alice", 600, clock.now)
    reload(srv)
    clock.now = T0 + 599
    srv.retire_expired()
    assert accepted(srv, knock(old, 1)), "one second before the deadline the old key opens"
    clock.now = T0 + 600
    caplog.set_level(logging.INFO, "stealth.server")
    srv.retire_expired()
    assert "key rotated client=alice: the old key's deadline passed" in caplog.text
    assert not accepted(srv, knock(old, 2))
    reload(srv)
    assert not accepted(srv, knock(old, 3)), "the clients file no longer lists the old key either"
    assert not accepted(started(state), knock(old, 4))
    assert accepted(srv, knock(new, 1)), "the new key was never used and opens after the deadline"


def test_a_folded_record_keeps_the_new_keys_spent_counters_spent(state: ServerState, clock: Clock) -> None:
    old = state.add_client("alice", (22,))
    srv = started(state)
    new, _, _ = state.rotate("alice", DAY_S, clock.now)
    reload(srv)
    assert accepted(srv, knock(new, 1))
    assert accepted(srv, knock(new, 2))
    # any admin command folds the finished rotation into the record: key and enrollment are the new ones
    state.add_client("bob", (22,))
    e = state.load_clients()["alice"]
    assert e.rotation is None and e.profile.key == new.key
    reload(srv)
    assert sorted(srv.table.clients) == ["alice", "bob"]
    assert not accepted(srv, knock(new, 2)), "the fold must not reset the new key's counter"
    assert not accepted(srv, knock(old, 3))
    assert accepted(srv, knock(new, 3)), "nor lose the new key's live tokens"
    assert not accepted(started(state), knock(new, 3))


def test_rotating_again_replaces_the_unused_new_key(state: ServerState, clock: Clock) -> None:
    old = state.add_client("alice", (22,))
    srv = started(state)
    first, _, _ = state.rotate("alice", DAY_S, clock.now)
    second, _, previous = state.rotate("alice", DAY_S, clock.now)
    assert previous is not None and previous.key == first.key
    reload(srv)
    assert not accepted(srv, knock(first, 1)), "the earlier rotation's new key no longer opens"
    assert accepted(srv, knock(old, 1))
    assert accepted(srv, knock(second, 1))
    assert not accepted(srv, knock(old, 2))


def test_revoking_a_client_in_a_rotation_ends_both_keys(
    state: ServerState, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    old = state.add_client("alice", (22,))
    srv = started(state)
    new, _, _ = state.rotate("alice", DAY_S, clock.now)
    reload(srv)
    state.revoke("alice")
    reload(srv)
    assert not srv.table.clients
    caplog.set_level(logging.WARNING, "stealth.server")
    assert not accepted(srv, knock(old, 1))
    assert not accepted(srv, knock(new, 1))
    assert srv.counts[Reason.REVOKED] == 2
    assert caplog.text.count("refused reason=revoked client=alice port=22 src=[198.51.100.10]:") == 2
    assert not accepted(started(state), knock(new, 1)), "after a restart the tokens are junk"


def test_a_re_enrolled_name_starts_from_its_new_keys_counter(state: ServerState, clock: Clock) -> None:
    """Revoke and add again under the same name before the server reloads: the new key has its own
    counter, so the old key's high counter must not push the new key's first knocks out of the window."""
    old = state.add_client("alice", (22,))
    srv = started(state)
    for counter in range(1, 40):
        assert accepted(srv, knock(old, counter))
    state.revoke("alice")
    again = state.add_client("alice", (22,))
    reload(srv)
    assert accepted(srv, knock(again, 1))
    assert not accepted(srv, knock(old, 40))


def test_the_new_keys_last_accept_survives_folds_of_both_files(state: ServerState, clock: Clock) -> None:
    """status shows the last accept of a rotated client's new key while the rotation is pending, after
    the record was folded, and across folds of the last-accept log (which keep only keys still held)."""

    def last_accept() -> object:
        srv.accepts.flush(1.0)
        for _ in srv.accepts._fold_steps():  # a whole fold of the log into the snapshot, now
            pass
        (alice,) = [c for c in status_doc(state)["clients"] if c["name"] == "alice"]
        return alice["last_accept"]

    state.add_client("alice", (22,))
    srv = started(state)
    new, _, _ = state.rotate("alice", DAY_S, clock.now)
    reload(srv)
    assert accepted(srv, knock(new, 1))
    assert last_accept() is not None, "while the rotation is pending"
    state.add_client("bob", (22,))  # folds alice's record: the new key becomes her key
    reload(srv)
    assert last_accept() is not None, "after the record's fold"


def test_with_two_workers_the_new_keys_first_knock_ends_the_old_key_on_the_other_worker_too(
    state: ServerState, clock: Clock
) -> None:
    """--workers: each worker has its own table. Once one worker made the new key's first accept durable,
    an old-key knock the other worker holds loses at its commit (the merge retires the old key there)."""
    old = state.add_client("alice", (22,))
    new, _, _ = state.rotate("alice", DAY_S, clock.now)
    first, second = Server(state, workers=2), Server(state, workers=2)
    first.start()
    second.start()
    assert accepted(first, knock(new, 1))
    assert not accepted(second, knock(old, 1)), "the old key opened once more on the other worker"
    assert second.counts[Reason.REVOKED] == 1 and second.counts[Reason.VALID] == 0
    assert not accepted(second, knock(old, 2)), "and the other worker's table has retired it"
    assert accepted(second, knock(new, 2))
    for srv in (first, second):
        srv.journal.close()
