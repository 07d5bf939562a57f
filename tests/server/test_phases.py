# Why: the daemon's life is a table (server.NEXT) that run() follows and status.json reports. These tests
# read the table as the docs draw it: one way forward, STOPPED reachable from every phase and final, and
# enter() refusing any move the table does not have.
import itertools
from pathlib import Path

import pytest

from stealth.server import NEXT, Phase, Server
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState

FORWARD = [Phase.NEW, Phase.LOADED, Phase.PROTECTING, Phase.SERVING, Phase.STOPPED]


def test_the_table_is_one_way_forward_with_a_stop_from_everywhere() -> None:
    for here, there in itertools.pairwise(FORWARD):
        assert there in NEXT[here]
    assert all(Phase.STOPPED in NEXT[p] for p in FORWARD[:-1])
    assert NEXT[Phase.STOPPED] == frozenset()
    assert set(NEXT) == set(Phase)
    assert all(FORWARD.index(b) > FORWARD.index(a) for a, targets in NEXT.items() for b in targets)


def test_enter_follows_the_table_and_status_reports_the_phase(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "state")
    state.init(ServerConfig("phases", (22,)))
    srv = Server(state)
    assert srv.status([4])["phase"] == "new"
    with pytest.raises(RuntimeError, match="new cannot go to serving"):
        srv.enter(Phase.SERVING)
    for phase in FORWARD[1:]:
        srv.enter(phase)
        assert srv.status([4])["phase"] == phase.value
    with pytest.raises(RuntimeError):
        srv.enter(Phase.NEW)
    srv.journal.close()
