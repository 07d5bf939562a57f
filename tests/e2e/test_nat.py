# Why: a token bound to the source port must survive NAT where it can. A NAT keeps the ISN but may rewrite the
# source port, and the source port carries ~13.8 of the token's bits. Here a real client sits behind a router
# namespace that masquerades, once keeping source ports (plain MASQUERADE) and once rewriting them
# (--random-fully). What the server receives is checked from a capture on the server's own interface.
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.privileged

SSH_PORT = 22
NAMES = ("alice", "natty")  # alice: port bits on (the default); natty: enrolled with --no-port-bits


@pytest.fixture(scope="module")
def nl() -> Iterator[Any]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.natlab import nat_lab

    # a server that drops unauthenticated packets, as in test_e2e_ssh.py, so "no answer" means silence
    clients = (("alice", ()), ("natty", ("--no-port-bits",)))
    with nat_lab(server_id="nat", clients=clients, init_args=("--unauth", "drop")) as lab:
        yield lab


def last_used(nl: Any, name: str) -> int:
    from stealth_connect.profiles import read_counter

    paths = list((nl.sl.client_dirs[name] / "counters").glob("*.ctr"))  # one key, one counter file
    assert len(paths) <= 1
    return read_counter(paths[0]).last_used if paths else 0


def tokens(nl: Any, name: str, counters: range) -> list[Any]:
    from stealth_connect.profiles import load_profile

    from stealth.core.token import derive

    prof = load_profile(nl.sl.client_dirs[name] / "hosts" / f"{nl.srv.ip4}.toml")
    return [derive(prof.key, prof.binding, SSH_PORT, c) for c in counters]


def knocks_at_server(packets: list[Any], nl: Any) -> list[Any]:
    """The SYNs to the protected port as the server received them: from the router's LAN address."""
    from scripts.lib.natlab import ROUTER_LAN_IP
    from scripts.lib.stealthlab import syns

    found = syns(packets, nl.srv.ip4, SSH_PORT)
    assert found, "no SYN reached the server"
    assert {p["IP"].src for p in found} == {ROUTER_LAN_IP}  # the client's own address never shows
    return [p["TCP"] for p in found]


def login(nl: Any, name: str) -> tuple[Any, list[Any], list[Any], int]:
    """ssh through stealth-connect from behind the NAT; (result, knocks at the server, tokens used,
    the source port of the first knock as it left the client, before the NAT)."""
    from scripts.lib.stealthlab import syns

    before = last_used(nl, name)
    with nl.srv.capture(f"tcp port {SSH_PORT}") as cap, nl.client.capture(f"tcp port {SSH_PORT}") as ccap:
        result = nl.sl.ssh(name, nl.srv.ip4)
    used = tokens(nl, name, range(before + 1, last_used(nl, name) + 1))
    sent = syns(ccap.packets(), nl.srv.ip4, SSH_PORT)
    assert sent and sent[0]["IP"].src == nl.client.ip4
    return result, knocks_at_server(cap.packets(), nl), used, int(sent[0]["TCP"].sport)


def test_plain_masquerade_keeps_the_port_so_both_kinds_of_client_log_in(nl: Any) -> None:
    nl.masquerade("plain")
    result, knocks, used, sport = login(nl, "alice")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    assert len(used) == 1  # the first knock got in
    assert sport == used[0].sport
    assert (knocks[0].seq, knocks[0].sport) == (used[0].isn, used[0].sport)  # port kept by the NAT

    result, knocks, used, sport = login(nl, "natty")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    assert len(used) == 1 and used[0].sport is None  # no port bits: the kernel picked the port
    assert (knocks[0].seq, knocks[0].sport) == (used[0].isn, sport)


def test_random_fully_no_port_bits_client_logs_in(nl: Any) -> None:
    nl.masquerade("random-fully")
    result, knocks, used, sport = login(nl, "natty")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    assert len(used) == 1
    assert knocks[0].seq == used[0].isn  # the ISN survives the NAT ...
    assert knocks[0].sport != sport  # ... the source port does not (1 in ~64k it is drawn unchanged)


def test_random_fully_breaks_a_port_bits_client_and_says_why(nl: Any) -> None:
    from scripts.lib.stealthlab import replies, tool

    nl.masquerade("random-fully")
    before = last_used(nl, "alice")
    drops_before = nl.sl.status()["counts"].get("unknown_token", 0)
    with nl.srv.capture(f"tcp port {SSH_PORT}") as cap:
        connect = nl.client.run(
            [tool("stealth-connect"), "--state-dir", str(nl.sl.client_dirs["alice"]), "--timeout", "1.5",
             nl.srv.ip4, str(SSH_PORT)],
            check=False, stdin=subprocess.DEVNULL, timeout=30,
        )
    assert connect.returncode == 1
    assert "no answer" in connect.stderr
    assert "--no-port-bits" in connect.stderr, connect.stderr  # the NAT explanation
    used = tokens(nl, "alice", range(before + 1, last_used(nl, "alice") + 1))
    assert len(used) == 1  # one knock (the kernel resent it on the same tuple): one counter
    packets = cap.packets()
    knocks = knocks_at_server(packets, nl)
    # each knock arrived with its token ISN but with a source port the NAT chose, so it was dropped
    by_isn = {k.seq: k for k in knocks}
    assert set(by_isn) == {t.isn for t in used}
    assert all(by_isn[t.isn].sport != t.sport for t in used)
    assert replies(packets, nl.srv.ip4) == []
    time.sleep(1.2)  # status.json is rewritten every second
    assert nl.sl.status()["counts"].get("unknown_token", 0) >= drops_before + 1
