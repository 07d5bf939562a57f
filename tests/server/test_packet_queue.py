# Why: the daemon's packet path, unprivileged. The in-memory FakeQueue is pinned to the real
# nfqueue.Queue (same signatures, both typed as a QueueFactory) and to the contract in packet_queue.py;
# then the real Worker loop runs over it in a thread, with real state files: knocks wait for one group
# commit and get their verdicts before the batch of drops, a replay and junk are dropped, the counter is
# durable before the verdict, a failed commit drops the knock, clients.jsonl changes are picked up
# between polls, and status.json reports what happened.
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stealth.core.token import derive
from stealth.errors import StealthError
from stealth.nfqueue import Queue
from stealth.packet_queue import AfterCommit, QueueFactory
from stealth.profile import Profile
from stealth.queue_fake import FakeQueue, Given
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState
from stealth.worker import Worker
from tests.syns import SRC4, knock_syn, syn

FACTORIES: list[QueueFactory] = [Queue, FakeQueue]  # mypy checks both against the protocol
MARK = 0x10000000


@pytest.mark.parametrize("name", ["__init__", "poll", "flush", "close"])
def test_the_fake_has_the_real_queues_signatures(name: str) -> None:
    assert inspect.signature(getattr(FakeQueue, name)) == inspect.signature(getattr(Queue, name))


def fake(verdicts: dict[bytes, int | AfterCommit | None], commit: Callable[[], list[bool]] | None = None,
         errors: list[BaseException] | None = None) -> FakeQueue:
    def handler(payload: bytes) -> int | AfterCommit | None:
        if payload == b"boom":
            raise ValueError("a handler bug")
        return verdicts[payload]

    return FakeQueue(50, handler, (errors if errors is not None else []).append, commit)


def test_held_knocks_get_their_verdicts_before_the_batch_of_drops() -> None:
    q = fake({b"junk1": None, b"knock": AfterCommit(MARK), b"open": 0, b"junk2": None})
    q.put(b"junk1", b"knock", b"open", b"junk2")
    q.poll(0)
    assert q.given == [Given(b"open", "accept", 0), Given(b"knock", "repeat", MARK),
                       Given(b"junk1", "drop", batch=1), Given(b"junk2", "drop", batch=1)]
    assert (q.commits, q.batches) == (1, 1)


def test_a_failed_or_short_commit_drops_every_held_knock_and_a_handler_bug_is_a_drop() -> None:
    errors: list[BaseException] = []

    def broken() -> list[bool]:
        raise OSError("disk full")

    for commit in (broken, lambda: [True]):
        q = fake({b"k1": AfterCommit(MARK), b"k2": AfterCommit(MARK)}, commit, errors)
        q.put(b"k1", b"k2", b"boom")
        q.poll(0)
        assert [(g.payload, g.action) for g in q.given] == [(b"k1", "drop"), (b"k2", "drop"),
                                                             (b"boom", "drop")]
    assert [type(e) for e in errors] == [ValueError, OSError, ValueError]


def test_commit_verdicts_go_one_to_one_in_order() -> None:
    held = {b"k1": AfterCommit(1), b"k2": AfterCommit(2), b"k3": AfterCommit(3)}
    q = fake({**held, b"late": 0}, lambda: [True, False, True])
    q.put(b"k1", b"k2", b"k3")
    q.poll(0)
    assert q.given == [Given(b"k1", "repeat", 1), Given(b"k2", "drop"), Given(b"k3", "repeat", 3)]
    q.put(b"late")
    q.close()
    assert q.given[-1] == Given(b"late", "drop"), "what was never read dies with the queue"
    with pytest.raises(RuntimeError):
        q.put(b"k1")


# --- the worker's loop over the fake queue ---------------------------------------------------------------
class Looping:
    """A Worker serving a FakeQueue in a thread, as the daemon serves NFQUEUE."""

    def __init__(self, state: ServerState) -> None:
        self.worker = Worker(state)
        self.worker.start()
        self.queue = FakeQueue(50, self.worker.handle, self.worker.on_error, self.worker.commit)
        self.thread = threading.Thread(target=self.worker.loop, args=(self.queue, [4]), daemon=True)

    def send(self, *payloads: bytes, timeout: float = 5.0) -> list[Given]:
        """Queue packets and wait until each has its verdict; the verdicts given for them, in order."""
        before = len(self.queue.given)
        self.queue.put(*payloads)
        deadline = time.monotonic() + timeout
        while len(self.queue.given) < before + len(payloads):
            assert time.monotonic() < deadline, "the loop gave no verdict"
            time.sleep(0.01)
        return self.queue.given[before:]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Looping, ServerState, list[Profile]]]:
    state = ServerState(tmp_path / "state")
    state.init(ServerConfig("loop", (22,)))
    profiles = state.add_clients(["alice", "bob"], (22,))
    looping = Looping(state)
    looping.thread.start()
    try:
        yield looping, state, profiles
    finally:
        looping.worker.stop = True
        looping.thread.join(timeout=10)
        looping.worker.journal.close()
    assert not looping.thread.is_alive()


def knock(profile: Profile, counter: int) -> bytes:
    return knock_syn(derive(profile.key, profile.binding, 22, counter))


def test_the_loop_commits_knocks_durably_before_their_verdicts(
    served: tuple[Looping, ServerState, list[Profile]]
) -> None:
    looping, state, (alice, bob) = served
    junk = syn(SRC4, "198.51.100.1", 40000, 22, 12345)
    given = looping.send(junk, knock(alice, 1), knock(bob, 1), knock(alice, 1))
    assert [(g.action, g.mark) for g in given] == [("repeat", MARK), ("repeat", MARK), ("drop", 0),
                                                   ("drop", 0)]
    assert looping.queue.commits == 1, "two knocks in one poll: one commit"
    counters = state.load_counters()
    enrolled = state.load_clients()
    assert counters[enrolled["alice"].enrollment] == 1 and counters[enrolled["bob"].enrollment] == 1
    looping.worker.stop = True
    looping.thread.join(timeout=10)
    status = state.read_status()
    assert status is not None and status["counts"] == {"replay": 1, "unknown_token": 1, "valid": 2}


def test_a_failed_journal_write_drops_the_knock_and_the_loop_goes_on(
    served: tuple[Looping, ServerState, list[Profile]], monkeypatch: pytest.MonkeyPatch
) -> None:
    looping, _, (alice, _) = served

    def full(entries: object) -> None:
        raise StealthError("counters.log: no space left on device")

    with monkeypatch.context() as m:
        m.setattr(looping.worker.journal, "append", full)
        (given,) = looping.send(knock(alice, 1))
    assert given.action == "drop"
    assert looping.worker.counts["persist_failed"] == 1
    (given,) = looping.send(knock(alice, 2))
    assert given.action == "repeat", "the next knock gets in once the journal is writable again"


def test_the_loop_follows_clients_jsonl_between_polls(
    served: tuple[Looping, ServerState, list[Profile]]
) -> None:
    looping, state, (alice, bob) = served
    (carol,) = state.add_clients(["carol"], (22,))
    state.revoke("bob")
    deadline = time.monotonic() + 5
    while len(looping.worker.table.clients) != 2 or "carol" not in looping.worker.table.clients:
        assert time.monotonic() < deadline, "no reload"
        time.sleep(0.05)
    given = looping.send(knock(carol, 1), knock(bob, 1), knock(alice, 1))
    assert [g.action for g in given] == ["repeat", "repeat", "drop"]
    assert [g.payload for g in given[:2]] == [knock(carol, 1), knock(alice, 1)]
