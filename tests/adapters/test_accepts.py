# Why: `status` shows each client's last accepted knock, so the daemon records it (stealth/accepts.py)
# without costing the packet path or growing without bound. These tests drive the record and the real
# Server's commit (no NFQUEUE needed): an accept reaches the files within one flush, the newest accept
# wins, a fold keeps only enrolled clients and bounds the files, a reader never misses an entry while a
# fold moves it from log to snapshot, and torn lines are skipped.
import time
from pathlib import Path

import pytest

import stealth.accepts
from stealth.accepts import AcceptRecord, read_last_accepts
from stealth.core.token import derive
from stealth.packet_queue import AfterCommit
from stealth.server import Server
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState
from stealth.status import render, status_doc
from tests.syns import SRC4, SRC6, knock_syn

V4 = bytes([198, 51, 100, 7])
V6 = bytes.fromhex("20010db8000000000000000000000007")


def ident(i: int) -> bytes:
    return i.to_bytes(8, "big")


def record(tmp_path: Path, live: set[str] | None = None) -> AcceptRecord:
    return AcceptRecord(tmp_path / "accepts.log", tmp_path / "accepts.snap",
                        lambda i, name: live is None or name in live)


def files(tmp_path: Path) -> list[Path]:
    return [tmp_path / "accepts.log", tmp_path / "accepts.snap"]


def test_notes_reach_the_files_at_the_next_flush_and_the_newest_wins(tmp_path: Path) -> None:
    rec = record(tmp_path)
    rec.note(ident(1), "alice", 1000, V4)
    rec.note(ident(2), "bob", 1001, V6)
    assert read_last_accepts(files(tmp_path)) == {}  # nothing is written on the packet path
    rec.flush(1.0)
    got = read_last_accepts(files(tmp_path))
    assert {k: (a.unix_time, a.source, a.name) for k, a in got.items()} == {
        ident(1).hex(): (1000, "198.51.100.7", "alice"), ident(2).hex(): (1001, "2001:db8::7", "bob")}
    rec.note(ident(1), "alice", 1005, V6)
    rec.note(ident(1), "alice", 1006, V4)  # twice within a second: one line, the later one
    rec.flush(1.0)
    lines = (tmp_path / "accepts.log").read_text().splitlines()
    assert len(lines) == 3
    assert read_last_accepts(files(tmp_path))[ident(1).hex()].unix_time == 1006
    size = (tmp_path / "accepts.log").stat().st_size
    rec.flush(1.0)  # nothing changed: nothing written
    assert (tmp_path / "accepts.log").stat().st_size == size
    rec.close()


def test_fold_keeps_enrolled_clients_bounds_the_files_and_readers_never_miss_an_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stealth.accepts, "ACCEPTS_LOG_MIN_BYTES", 0)
    monkeypatch.setattr(stealth.accepts, "FOLD_CHUNK_LINES", 7)
    clients = 50
    live = {f"c{i}" for i in range(clients)}
    rec = record(tmp_path, live)
    newest: dict[str, int] = {}
    folds = 0
    for rnd in range(40):
        for i in range(clients + 5):  # c50..c54 are not enrolled (revoked)
            if (i + rnd) % 3 == 0:
                rec.note(ident(i), f"c{i}", 1000 + rnd, V4)
                if i < clients:
                    newest[ident(i).hex()] = 1000 + rnd
        rec.flush(0.0)  # at most one chunk of a fold per call
        while rec.folding:
            seen = read_last_accepts(files(tmp_path))  # between two steps of a fold
            assert all(seen[k].unix_time >= t for k, t in newest.items() if t < 1000 + rnd), rnd
            rec.flush(0.0)
            folds += 1
        total = sum(len(p.read_text().splitlines()) for p in files(tmp_path) if p.exists())
        assert total <= 2 * (clients + 5) + clients + 5, (rnd, total)  # snapshot + log + one flush
    rec.close()
    assert folds > 0
    got = read_last_accepts(files(tmp_path))
    assert {k: a.unix_time for k, a in got.items() if a.name in live} == newest
    snap = (tmp_path / "accepts.snap").read_text().splitlines()
    assert {line.split()[3] for line in snap} <= live  # revoked clients fell out
    assert len(snap) == len({line.split()[0] for line in snap})  # one line per client


def test_torn_and_foreign_lines_are_skipped(tmp_path: Path) -> None:
    good = f"{ident(1).hex()} 1000 198.51.100.7 alice\n"
    (tmp_path / "accepts.log").write_text(
        "garbage\n" + good + f"{ident(2).hex()} 10x0 198.51.100.8 bob\n" + f"{ident(3).hex()} 1000 19")
    got = read_last_accepts(files(tmp_path))
    assert list(got) == [ident(1).hex()]


def test_the_servers_accept_shows_in_status_with_time_and_source(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "state")
    state.init(ServerConfig("acc", (22,)))
    alice, bob = state.add_clients(["alice", "bob"], (22,))
    srv = Server(state)
    srv.start()
    before = int(time.time())
    for payload in (knock_syn(derive(alice.key, alice.binding, 22, 1)),
                    knock_syn(derive(bob.key, bob.binding, 22, 1), src=SRC6, dst="2001:db8::1")):
        assert isinstance(srv.handle(payload), AfterCommit)
    assert srv.commit() == [True, True]
    srv.accepts.flush(1.0)
    doc = status_doc(state)
    last = {c["name"]: c["last_accept"] for c in doc["clients"]}
    assert last["alice"]["source"] == SRC4 and last["bob"]["source"] == SRC6
    assert before <= last["alice"]["unix_time"] <= time.time()
    text = render(doc)
    assert f"  alice: ports 22 last counter 1; last accepted {last['alice']['time']} from {SRC4}" in text
    state.revoke("bob")
    srv.load()
    srv.accepts.close()
    assert [c["name"] for c in status_doc(state)["clients"]] == ["alice"]
    srv.journal.close()
