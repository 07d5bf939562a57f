# Why: with a million clients a reload of clients.jsonl takes seconds, so the server does it in steps
# between queue polls. These tests drive the real Server's reload (no NFQUEUE needed) and check what a
# stepped reload must keep: knocks are still served in the middle of it, the end state is exactly the
# new file (revoked clients gone, new ones in, counters never moved back), and a bad file changes
# nothing at all even though the reload is spread over many steps.
from pathlib import Path

import pytest

import stealth.loader
from stealth.core.packet import Reason
from stealth.core.token import derive
from stealth.packet_queue import AfterCommit
from stealth.profile import Profile
from stealth.server import Server
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState
from tests.syns import knock_syn

N = 5000


def knock(profile: Profile, counter: int) -> bytes:
    return knock_syn(derive(profile.key, profile.binding, 22, counter))


def accepted(srv: Server, payload: bytes) -> bool:
    verdict = srv.handle(payload)
    if not isinstance(verdict, AfterCommit):
        return False
    return srv.commit() == [True]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Server, ServerState, list[Profile]]:
    monkeypatch.setattr(stealth.loader, "RELOAD_STEP_SECONDS", 0.0)  # one chunk per maybe_reload()
    state = ServerState(tmp_path / "state")
    state.init(ServerConfig("reload", (22,)))
    profiles = state.add_clients((f"c{i:05d}" for i in range(N)), (22,))
    srv = Server(state)
    srv.start()
    return srv, state, profiles


def run_reload(srv: Server) -> int:
    """Advance a reload to its end; returns the number of steps it took."""
    steps = 0
    srv.maybe_reload()
    while srv.sync.reloading:
        steps += 1
        srv.maybe_reload()
    return steps


def test_stepped_reload_serves_knocks_and_ends_exactly_at_the_new_file(
    server: tuple[Server, ServerState, list[Profile]]
) -> None:
    srv, state, profiles = server
    first, revoked, last = profiles[0], profiles[N // 2], profiles[-1]
    assert accepted(srv, knock(first, 1))
    state.revoke(revoked.name)
    (newcomer,) = state.add_clients(["late"], (22,))
    srv.maybe_reload()
    assert srv.sync.reloading, "a 5,000-client reload should take several steps"
    # in the middle of the reload: unchanged clients are served, counters still move forward only
    assert accepted(srv, knock(last, 1))
    assert not accepted(srv, knock(first, 1))
    assert srv.counts[Reason.REPLAY] == 1
    steps = run_reload(srv)
    assert steps >= 3
    assert srv.reload_error is None
    assert len(srv.table.clients) == N
    assert not accepted(srv, knock(revoked, 1))
    assert srv.counts[Reason.REVOKED] == 1
    assert accepted(srv, knock(newcomer, 1))
    assert not accepted(srv, knock(first, 1)), "a reload must not roll a counter back"
    assert accepted(srv, knock(first, 2))


def test_bad_file_changes_nothing_even_when_reloaded_in_steps(
    server: tuple[Server, ServerState, list[Profile]]
) -> None:
    srv, state, profiles = server
    state.revoke(profiles[1].name)
    (newcomer,) = state.add_clients(["late"], (22,))
    text = state.clients_path.read_bytes()
    lines = text.splitlines(keepends=True)
    # a new client early in the file, and a fault at its very end: the last client enrolled twice
    state.clients_path.write_bytes(lines[0] + lines[-1] + b"".join(lines[1:-1]) + lines[-2])
    run_reload(srv)
    assert srv.reload_error is not None and "enrolled twice" in srv.reload_error
    assert str(state.clients_path) in srv.reload_error
    assert len(srv.table.clients) == N, "nothing was added or removed by the failed reload"
    assert not accepted(srv, knock(newcomer, 1)), "a client before the fault was not enrolled either"
    assert accepted(srv, knock(profiles[1], 1)), "the revocation is applied only with a valid file"
    state.clients_path.write_bytes(text)
    run_reload(srv)
    assert srv.reload_error is None
    assert not accepted(srv, knock(profiles[1], 2))
    assert accepted(srv, knock(newcomer, 1))
