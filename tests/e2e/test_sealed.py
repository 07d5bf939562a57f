# Why: on a sealed port a valid token alone reaches nothing. Whoever holds a token without the key (an
# on-path party who stole the SYN, a recorder who captured a knock the server never heard, a guesser)
# gets a TCP connection whose first bytes must prove the knock's session key within the deadline; else
# an RST, and not one byte of sshd. The key holder logs in with plain ssh (ProxyCommand and --fdpass),
# its session survives a kill -9 of the daemon, and a revoked client gets nothing.
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged

DEADLINE_S = 1.0

# a client per test: a thief who spends a client's counters uses up its one recovery of the slot
sl = lab_fixture("sealed", ("alice", "bob", "carol", "dave", "eve"),
                 init_args=("--seal", "22=127.0.0.1:22", "--seal-deadline-ms", str(int(DEADLINE_S * 1000))))


def profile(sl: "StealthLab", name: str) -> Any:
    from stealth_connect.profiles import ClientStore, load_profile

    return load_profile(ClientStore(sl.client_dirs[name]).find(sl.srv.ip4))


def next_knock(sl: "StealthLab", name: str, ahead: int = 1) -> Any:
    """The token `name`'s next knock will carry, as a thief who sees it on the wire has it."""
    from stealth.core.token import derive

    p = profile(sl, name)
    return derive(p.key, p.binding, 22, sl.counter(name) + ahead)


def thief(sl: "StealthLab", knock: Any, proof: bytes = b"", delay: float = 0.0) -> dict[str, Any]:
    from scripts.lib.stealthlab import use_token

    return use_token(sl.atk, sl.srv.ip4, 22, knock.isn, knock.sport, proof, delay)


def test_key_holder_logs_in_through_proxycommand_and_fdpass(sl: "StealthLab") -> None:
    assert profile(sl, "alice").sealed == (22,)
    for fdpass in (False, True):
        r = sl.ssh("alice", sl.srv.ip4, fdpass=fdpass)
        assert r.returncode == 0 and r.stdout.strip() == "stealth-ok", r.stderr


def test_a_token_without_the_key_gets_nothing(sl: "StealthLab") -> None:
    from stealth.core.seal import client_proof
    from stealth.core.token import derive

    p = profile(sl, "alice")
    earlier = derive(p.key, p.binding, 22, sl.counter("alice"))  # the proof of her last connection
    cases = {
        "silent": (b"", 0.0),
        "garbage": (os.urandom(16), 0.0),
        "replayed proof": (client_proof(earlier.session_key), 0.0),
    }
    for ahead, (name, (proof, delay)) in enumerate(cases.items(), start=1):
        got = thief(sl, next_knock(sl, "alice", ahead), proof, delay)
        assert got["connected"], (name, got)  # the stolen token is valid: the handshake completes
        assert got["bytes"] == "" and got["how"] == "rst", (name, got)  # and then: nothing, an RST
        if name == "silent":
            assert DEADLINE_S - 0.2 < got["closed_after"] < DEADLINE_S + 2, got
        else:
            assert got["closed_after"] < DEADLINE_S, got  # a wrong proof is refused at once
    # alice's own next knocks were spent by the thief: she is refused, recovers, and gets in
    r = sl.ssh("alice", sl.srv.ip4)
    assert r.returncode == 0, r.stderr


def test_the_right_proof_after_the_deadline_gets_nothing(sl: "StealthLab") -> None:
    from stealth.core.seal import client_proof

    assert sl.ssh("bob", sl.srv.ip4).returncode == 0
    knock = next_knock(sl, "bob")
    got = thief(sl, knock, client_proof(knock.session_key), DEADLINE_S + 0.5)
    assert got["connected"] and got["bytes"] == "" and got["how"] == "rst", got
    # and in time, the same kind of connection gets the server's proof, then sshd's banner
    from stealth.core.seal import server_proof

    knock = next_knock(sl, "bob", 2)
    got = thief(sl, knock, client_proof(knock.session_key), 0.0)
    data = bytes.fromhex(got["bytes"])
    assert data[:16] == server_proof(knock.session_key) and data[16:].startswith(b"SSH-2.0-"), got
    assert sl.ssh("bob", sl.srv.ip4).returncode == 0  # refused twice, then the recovery knock


def test_a_knock_captured_while_the_server_was_down_gets_nothing(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import tool

    assert sl.server_proc is not None
    os.killpg(sl.server_proc.pid, signal.SIGKILL)
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None
    with sl.srv.capture("tcp dst port 22 and tcp[tcpflags] == tcp-syn") as cap:
        argv = [tool("stealth-connect"), "--state-dir", str(sl.client_dirs["carol"]), "--timeout", "0.5",
                sl.srv.ip4, "22"]
        assert sl.cli.run(argv, check=False, stdin=subprocess.DEVNULL, timeout=30).returncode == 1
    (seen,) = {(p["TCP"].seq, p["TCP"].sport) for p in cap.packets()}
    sl.start_server()
    # the recorder uses the unheard knock first, from its own address: a connection, and nothing in it

    class Captured:
        isn, sport = seen

    got = thief(sl, Captured)
    assert got["connected"] and got["bytes"] == "" and got["how"] == "rst", got
    assert sl.ssh("carol", sl.srv.ip4).returncode == 0


def test_a_sealed_session_survives_kill_9_of_the_daemon(sl: "StealthLab") -> None:
    session = sl.cli.popen(sl.ssh_argv("dave", sl.srv.ip4, command="sleep 3; echo survived"),
                           stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    assert sl.server_proc is not None
    os.kill(sl.server_proc.pid, signal.SIGKILL)  # the daemon alone; its acceptor follows it
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None
    out, err = session.communicate(timeout=30)
    assert session.returncode == 0 and out.strip() == "survived", err
    sl.start_server()


def test_a_revoked_client_gets_nothing(sl: "StealthLab") -> None:
    assert sl.ssh("eve", sl.srv.ip4).returncode == 0
    sl.stealth("server", "revoke", "eve", "--state-dir", str(sl.state_dir))
    time.sleep(2.5)  # the server re-reads clients.jsonl every second
    r = sl.ssh("eve", sl.srv.ip4, connect_timeout=10)
    assert r.returncode != 0 and "stealth-ok" not in r.stdout


def test_sealed_logins_over_ipv6_and_with_two_workers(sl: "StealthLab") -> None:
    r = sl.ssh("alice", sl.srv.ip6)
    assert r.returncode == 0 and r.stdout.strip() == "stealth-ok", r.stderr
    sl.stop_server()
    sl.start_server(["--workers", "2"])  # the session keys reach the acceptor from either worker
    try:
        for host in (sl.srv.ip4, sl.srv.ip6, sl.srv.ip4):
            r = sl.ssh("alice", host)
            assert r.returncode == 0 and r.stdout.strip() == "stealth-ok", r.stderr
    finally:
        sl.stop_server()
        sl.start_server()


def test_with_the_ruleset_flushed_a_stranger_gets_no_byte(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import stranger, stranger_result

    assert sl.server_proc is not None
    os.killpg(sl.server_proc.pid, signal.SIGKILL)  # no daemon to put the rules back
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None
    sl.srv.run(["nft", "flush", "ruleset"])
    try:
        for target in (sl.srv.ip4, sl.srv.ip6):
            got = stranger_result(stranger(sl.atk, target, 22, 1.0))
            assert got["connected"] == 0 and got["bytes"] == "", got  # sshd is on loopback only
    finally:
        sl.start_server()
