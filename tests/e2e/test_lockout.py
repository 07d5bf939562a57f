# Why: a key holder must never need an administrator. Tried as a user meets it, with real sshd and
# OpenSSH in namespaces: the server killed (rules kept) during 30 abandoned ssh attempts, an on-path box
# that drops the client's SYNs, 20 runs without the privilege, sshd stopped under a running stealth, a
# local process holding every source port the knocks need, a client far past the window, and two devices
# with copies of one profile. Each checks what reached the wire, what the counter file says, and that the
# next login works with no admin command. The lab resets unused ports (Linux's default), so a knock the
# server refuses gets the kernel's RST.
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.privileged

ATTEMPT_SECONDS = 0.6  # each ssh attempt is abandoned (its process group killed) after this long


@pytest.fixture(scope="module")
def sl() -> Iterator[Any]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="lockout", clients=("alice", "bob")) as lab:
        assert "ipv4:reset" in lab.ready_line, lab.ready_line
        yield lab


def counter_file(sl: Any, name: str = "alice", cdir: Path | None = None) -> Path:
    from stealth_connect.profiles import ClientStore, load_profile

    store = ClientStore(cdir or sl.client_dirs[name])
    path: Path = store.counter_path(load_profile(store.find(sl.srv.ip4)))
    return path


def state(sl: Any, cdir: Path | None = None) -> Any:
    from stealth_connect.counter import read_counter

    return read_counter(counter_file(sl, cdir=cdir))


def abandoned_attempts(sl: Any, n: int, seconds: float = ATTEMPT_SECONDS) -> None:
    """n ssh logins, each given up after `seconds`: its whole process group (ssh and stealth-connect)
    is killed, as when a user presses ^C."""
    for _ in range(n):
        proc = sl.cli.popen(sl.ssh_argv("alice", sl.srv.ip4), stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def login(sl: Any, name: str = "alice", host: Any = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """ssh through stealth-connect from the client namespace (or `host`)."""
    result: subprocess.CompletedProcess[str] = (host or sl.cli).run(
        sl.ssh_argv(name, sl.srv.ip4, **kw), check=False, timeout=60, stdin=subprocess.DEVNULL)
    return result


def knock_isns(sl: Any, packets: list[Any]) -> set[tuple[int, int]]:
    from scripts.lib.stealthlab import syns

    return {(p["TCP"].seq, p["TCP"].sport) for p in syns(packets, sl.srv.ip4, 22)}


def kill_server(sl: Any) -> None:
    assert sl.server_proc is not None
    os.killpg(sl.server_proc.pid, signal.SIGKILL)  # rules stay: fail closed
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None


def test_server_down_during_30_abandoned_attempts_costs_nothing(sl: Any) -> None:
    assert login(sl).returncode == 0
    before = state(sl)
    kill_server(sl)
    with sl.cli.capture("tcp dst port 22 and tcp[tcpflags] & tcp-syn != 0") as cap:
        abandoned_attempts(sl, 30)
    # every attempt sent the pending knock again: one token per PENDING_KNOCK_SECONDS on the wire, and
    # never more than RECOVER_AFTER_UNANSWERED counters in all
    isns = knock_isns(sl, cap.packets())
    after = state(sl)
    spent = after.last_used - before.last_used
    assert 1 <= spent <= 2 and len(isns) == spent and after.pending == after.last_used, (isns, after)
    sl.start_server()
    result = login(sl)
    assert result.returncode == 0, result.stderr
    assert state(sl).last_ok <= after.last_used + 1  # a knock that went unheard got in, or the next


def test_on_path_dropper_for_30_attempts_then_the_first_login_works(sl: Any) -> None:
    drop = ["PREROUTING", "-s", sl.cli.ip4, "-p", "tcp", "--dport", "22", "--syn", "-j", "DROP"]
    before = state(sl)
    sl.srv.run(["iptables", "-t", "raw", "-I", *drop])
    try:
        abandoned_attempts(sl, 30, seconds=0.5)
    finally:
        sl.srv.run(["iptables", "-t", "raw", "-D", *drop])
    assert state(sl).last_used - before.last_used <= 2
    result = login(sl)
    assert result.returncode == 0, result.stderr


def test_twenty_runs_without_the_privilege_spend_nothing(sl: Any) -> None:
    from scripts.lib.stealthlab import tool

    before = state(sl)
    argv = [tool("stealth-connect"), "--state-dir", str(sl.client_dirs["alice"]), sl.srv.ip4, "22"]
    for _ in range(20):
        r = sl.cli.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *argv],
                       check=False, timeout=30, stdin=subprocess.DEVNULL)
        assert r.returncode == 1 and "CAP_NET_ADMIN" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert state(sl) == before
    assert login(sl).returncode == 0
    assert state(sl).last_used == before.last_used + 1


def test_sshd_stopped_under_stealth_says_so_and_spends_nothing(sl: Any) -> None:
    from scripts.lib.stealthlab import use_token
    from stealth.core.token import derive

    sl.stop_sshd()
    try:
        before = state(sl)
        result = login(sl)
        assert result.returncode != 0
        assert "accepted, but" in result.stderr and "reset the connection" in result.stderr, result.stderr
        after = state(sl)
        assert after.last_used == after.last_ok == before.last_used + 1  # answered: nothing pending
    finally:
        sl.start_sshd()
    # the server reset that accepted connection; conntrack keeps it (CLOSE, 10 s) and does not reopen it
    # for a new SYN on its tuple: such a SYN, with any ISN, must still meet the daemon, not the old mark
    from stealth_connect.profiles import ClientStore, load_profile

    prof = load_profile(ClientStore(sl.client_dirs["alice"]).find(sl.srv.ip4))
    knock = derive(prof.key, prof.binding, 22, after.last_ok)
    assert knock.sport is not None
    got = use_token(sl.cli, sl.srv.ip4, 22, (knock.isn + 12345) % 2**32 or 1, knock.sport)
    assert not got["connected"] and got["bytes"] == "", got
    assert login(sl).returncode == 0


HOG = """
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 14,116 even ports need that many sockets
held = []
for port in range(32768, 61000, 2):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
        s.listen(1)
        held.append(s)
    except OSError:
        s.close()
print(len(held), flush=True)
time.sleep(120)
"""


def test_a_port_hog_spends_nothing(sl: Any) -> None:
    import sys

    from scripts.lib.stealthlab import tool

    before = state(sl)
    hog = sl.cli.popen([sys.executable, "-c", HOG])
    try:
        assert hog.stdout is not None
        assert int(hog.stdout.readline()) > 14000
        argv = [tool("stealth-connect"), "--state-dir", str(sl.client_dirs["alice"]), sl.srv.ip4, "22"]
        for _ in range(3):
            r = sl.cli.run(argv, check=False, timeout=30, stdin=subprocess.DEVNULL)
            assert r.returncode == 1 and "in use on this machine" in r.stderr, r.stderr
            assert "nothing was spent" in r.stderr
        assert state(sl) == before
    finally:
        hog.kill()
        hog.wait(timeout=10)
    assert login(sl).returncode == 0
    assert state(sl).last_used == before.last_used + 1


def test_far_past_the_window_the_client_recovers_by_itself(sl: Any) -> None:
    from stealth_connect.counter import take_counter

    from stealth.core.recovery import recovery_base, slot_of

    for _ in range(40):  # as if 40 knocks had been sent and lost: far past W=16
        take_counter(counter_file(sl))
    result = login(sl)
    assert result.returncode == 0, result.stderr
    assert "recovery knock" in result.stderr  # the user is told, with what to do about two devices
    slot = slot_of(time.time())
    assert state(sl).last_ok in (recovery_base(slot), recovery_base(slot - 1))
    assert login(sl).returncode == 0  # and the next plain knock follows on from the new base
    time.sleep(1.2)
    assert sl.status()["counts"].get("recovery", 0) >= 1


def test_two_devices_with_one_profile_are_told_what_to_do(sl: Any) -> None:
    """bob (a recovery budget of his own: one recovery knock per slot and client) on a desktop (the
    client namespace), and a copy of his profile on a laptop (the third namespace: another address)."""
    assert login(sl, "bob").returncode == 0
    profile = sl.lab.tmp / "bob.profile.toml"
    laptop = sl.lab.tmp / "client-bob-laptop"
    sl.stealth("client", "import", str(profile), "--host", sl.srv.ip4, "--state-dir", str(laptop))
    sl.client_dirs["laptop"] = laptop
    try:
        # the laptop's copy starts from counter 1, long spent by the desktop: its knock is refused (an
        # RST), one recovery knock gets it in, and it says why and what to do
        first = login(sl, "laptop", host=sl.atk)
        assert first.returncode == 0, first.stderr
        assert "another device" in first.stderr and "--devices" in first.stderr, first.stderr
        # now the desktop is behind: its knock is refused, and so is its recovery knock of this slot
        # (the laptop used it); the first counter after the laptop's base may still get it in. Either
        # way it is told what happened and what to do, never left guessing
        second = login(sl, "bob")
        assert "another device" in second.stderr and "own profile" in second.stderr, second.stderr
    finally:
        del sl.client_dirs["laptop"]
