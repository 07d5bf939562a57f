# Why: the client agent is how people without root knock: a root process hands members of one group sockets
# whose SYN carries a chosen ISN. Tried as a user meets it, in the lab with real sshd and OpenSSH: uid 65534
# (nobody, no capabilities) with the client-only install (the venv of tests/client/test_client_install.py)
# logs in through the agent with ProxyUseFdpass and with the relay, using the ~/.ssh/config block that
# `stealth client ssh-config` prints; without the agent, or outside its group, one line says what to do and
# nothing is spent; the agent outlives malformed, oversized, fd-carrying and silent clients and still hands
# out exactly the ISN asked for; a Host alias finds its profile; a name whose first address is a black hole
# gets through on the next one after ~2.5 s.
import contextlib
import json
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scripts.lib.userlab import ANSWER, NOBODY, Agent, User, make_user, shared_dir, throwaway_group

pytestmark = pytest.mark.privileged

ALIAS = "myalias"
DUAL_NAME = "dualstack.stealth.test"
BLACKHOLE6 = "2001:db8:99::5"  # routed (via the attacker's namespace, which drops it), owned by no one
LISTEN_PORT = 40022  # the probe's own listener on the client's loopback


# --- the pieces ----------------------------------------------------------------------------------------


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed run wrote to stderr (asserts there is exactly one, and no output)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    return lines[0]


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def venv() -> Path:
    from tests.conftest import client_venv_or_skip, require_privileges

    require_privileges()
    return client_venv_or_skip()


@pytest.fixture(scope="module")
def sl(venv: Path) -> Iterator[Any]:
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="agent", clients=(), start=False) as lab:
        for name in ("nobody", "alias"):  # enrolled before the server starts: no wait for its reload
            enroll(lab, name)
        lab.start_server()
        yield lab


@pytest.fixture(scope="module")
def group() -> Iterator[tuple[str, int]]:
    with throwaway_group() as g:
        yield g


@pytest.fixture(scope="module")
def top() -> Iterator[Path]:
    with shared_dir("stealth-agent-test-") as path:
        yield path


@pytest.fixture(scope="module")
def agent(sl: Any, venv: Path, group: tuple[str, int], top: Path) -> Iterator[Agent]:
    (top / "run").mkdir(mode=0o755)
    a = Agent(sl, venv, top / "run" / "agent.sock", group[0], top / "agent.log")
    a.start()
    try:
        yield a
    finally:
        a.stop()


def enroll(sl: Any, name: str) -> Path:
    profile: Path = sl.lab.tmp / f"{name}.profile.toml"
    sl.stealth("server", "add-client", name, "--ports", "22", "--state-dir", str(sl.state_dir),
               "--profile-out", str(profile))
    return profile


@pytest.fixture(scope="module")
def user(sl: Any, venv: Path, group: tuple[str, int], top: Path, agent: Agent) -> User:
    """nobody, with a profile imported under the server's address and two ssh configs for it."""
    u = make_user(sl, venv, group[1], top, agent, "home")
    u.import_profile(sl.lab.tmp / "nobody.profile.toml", sl.srv.ip4)
    u.ssh_config("fdpass", sl.srv.ip4)
    u.ssh_config("relay", sl.srv.ip4, "--relay")
    return u


@pytest.fixture
def running(agent: Agent) -> Iterator[Agent]:
    """The agent, started again after a test that stopped it (even if it failed)."""
    yield agent
    if not agent.alive():
        agent.start()


# --- tests ---------------------------------------------------------------------------------------------


_PRIVILEGE_PROBE = """
import errno, socket
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff:")][0]
s = socket.socket()
try:
    s.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR
    print(caps, "repair-allowed")
except PermissionError:
    print(caps, "repair-denied")
"""


@pytest.mark.parametrize("mode", ["fdpass", "relay"])
def test_non_root_user_logs_in_through_the_agent(sl: Any, user: User, running: Agent, mode: str) -> None:
    # the user can not set an ISN itself: whatever knocks for it is the agent
    probe = user.run(["python3", "-c", _PRIVILEGE_PROBE])
    assert probe.stdout.split() == ["0000000000000000", "repair-denied"], probe
    block = user.configs[mode].read_text()
    exe = user.venv / "bin" / "stealth-connect"
    proxy = f"ProxyCommand {exe} {'--fdpass ' if mode == 'fdpass' else ''}--name %n %h %p"
    assert proxy in block and ("ProxyUseFdpass yes" in block) == (mode == "fdpass"), block
    before = user.last_used(sl.srv.ip4)
    with sl.cli.capture("tcp dst port 22") as cap:
        r = user.ssh(mode, sl.srv.ip4)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == ANSWER
    assert user.last_used(sl.srv.ip4) == before + 1
    # the knock left with the token's ISN, from the socket the agent made
    from stealth_connect.profiles import ClientStore, load_profile

    from scripts.lib.stealthlab import syns
    from stealth.core.token import derive

    prof = load_profile(ClientStore(user.state_dir).find(sl.srv.ip4))
    knock = derive(prof.key, prof.binding, 22, before + 1)
    first = syns(cap.packets(), sl.srv.ip4, 22)[0]
    assert (first["TCP"].seq, first["TCP"].sport) == (knock.isn, knock.sport)
    # without the agent the same login fails at once, saying how to start it, and spends nothing
    spent = user.counters()
    running.stop()
    r = user.ssh(mode, sl.srv.ip4)
    assert r.returncode != 0 and ANSWER not in r.stdout
    assert "stealth client agent" in r.stderr, r.stderr
    assert user.counters() == spent


def test_without_the_agent_one_line_and_nothing_spent(sl: Any, user: User, running: Agent) -> None:
    assert user.ssh("fdpass", sl.srv.ip4).returncode == 0  # the counter file exists and is in use
    spent = user.counters()
    assert spent
    for how in (signal.SIGTERM, signal.SIGKILL):  # gone (socket removed), or dead (a stale socket left)
        running.stop(how)
        assert running.socket.exists() == (how == signal.SIGKILL)
        with sl.cli.capture("tcp dst port 22") as cap:
            r = user.connect(sl.srv.ip4, "22")
        line = one_line(r)
        assert "stealth client agent" in line and "nothing was spent" in line, line
        assert str(running.socket) in line
        assert cap.packets() == []  # nothing left for the server
        assert user.counters() == spent
        running.start()  # a stale socket does not stop a new agent
    assert user.ssh("fdpass", sl.srv.ip4).returncode == 0


def test_the_agent_refuses_users_outside_its_group(sl: Any, user: User, running: Agent) -> None:
    mode = stat.S_IMODE(running.socket.stat().st_mode)
    assert mode == 0o660 and running.socket.stat().st_gid == user.gid, oct(mode)
    spent = user.counters()
    # the socket file keeps an outsider away...
    line = one_line(user.connect(sl.srv.ip4, "22", creds="outsider"))
    assert "permission denied" in line and "nothing was spent" in line, line
    # ...and so does the agent itself, when the file would let anyone in
    running.socket.chmod(0o666)
    try:
        line = one_line(user.connect(sl.srv.ip4, "22", creds="outsider"))
    finally:
        running.socket.chmod(0o660)
    assert "refused this user" in line and f"uid {NOBODY}" in line and "nothing was spent" in line, line
    assert f"uid {NOBODY}: not in the agent's group" in running.log.read_text()
    assert user.counters() == spent
    # the group as primary group is as good as a supplementary one
    r = user.ssh("fdpass", sl.srv.ip4, creds="primary")
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stderr
    assert running.alive()


# Run as nobody in the agent's group: a client of the agent's protocol that misbehaves in every way, then
# behaves. Prints JSON: for each case the reply status (hex), fds received, and whether the agent closed
# the connection right after; how long a silent client was kept; and what the good requests gave.
_PROBE = r"""
import json, os, select, socket, struct, sys, time
path, isn4, isn6, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {}

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    assert s.recv(16) == b"\0", "not greeted"
    return s

def closed_now(s):
    s.settimeout(1.0)
    try:
        return s.recv(16) == b""
    except TimeoutError:
        return False
    except OSError:
        return True

def request(fam, isn, pad=b"\0\0\0", magic=b"SKA1"):
    return magic + bytes([fam]) + pad + struct.pack("!I", isn)

def ask(s, data, fds=()):
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    s.sendmsg([data], rights)
    try:
        msg, got, _, _ = socket.recv_fds(s, 16, 4)
    except OSError as e:
        return {"status": repr(e), "fds": 0, "closed": True}, []
    return {"status": msg.hex(), "fds": len(got)}, got

silent = connect()
silent_since = time.monotonic()

good = request(4, isn4)
cases = {
    "short": good[:11], "long": good + b"\0", "oversized": good + bytes(65536 - len(good)),
    "magic": request(4, isn4, magic=b"SKA2"), "family5": request(5, isn4), "family0": request(0, isn4),
    "pad": request(4, isn4, pad=b"\0\1\0"), "isn0": request(4, 0),
}
for name, data in cases.items():
    s = connect()
    reply, got = ask(s, data)
    for fd in got:
        os.close(fd)
    reply["closed"] = closed_now(s)
    out[name] = reply
    s.close()

# a well-formed request that carries an fd: refused, and the agent keeps no copy of it
r, w = os.pipe()
s = connect()
reply, got = ask(s, good, [w])
os.close(w)
reply["closed"] = closed_now(s)
ready, _, _ = select.select([r], [], [], 3)
reply["fd_closed_by_agent"] = bool(ready) and os.read(r, 1) == b""
out["with_fd"] = reply
s.close()

# the agent is not held by the silent client: a good request is served meanwhile
s = connect()
reply, got = ask(s, good)
out["while_silent"] = reply
for fd in got:
    os.close(fd)
# at most 16 requests a connection: the 16th answer is followed by the end of the connection
for i in range(15):
    _, more = ask(s, good)
    for fd in more:
        os.close(fd)
out["after_16_closed"] = closed_now(s)
s.close()

silent.settimeout(10)
try:
    out["silent_end"] = silent.recv(16).hex()
except OSError as e:
    out["silent_end"] = repr(e)
out["silent_kept"] = time.monotonic() - silent_since

# finally, well-formed requests get sockets whose SYN carries exactly that ISN
for fam, isn, host in ((socket.AF_INET, isn4, "127.0.0.1"), (socket.AF_INET6, isn6, "::1")):
    listener = socket.create_server((host, port), family=fam)
    s = connect()
    reply, got = ask(s, request(4 if fam == socket.AF_INET else 6, isn))
    s.close()
    key = f"good{4 if fam == socket.AF_INET else 6}"
    out[key] = reply
    if len(got) == 1:
        k = socket.socket(fileno=got[0])
        reply["kind"] = [k.family == fam, k.type == socket.SOCK_STREAM, k.getsockname()[1] == 0]
        try:
            k.setsockopt(socket.IPPROTO_TCP, 19, 1)  # TCP_REPAIR: not for this user
            reply["repair"] = "allowed"
        except PermissionError:
            reply["repair"] = "denied"
        k.settimeout(5)
        k.bind((host, 0))
        k.connect((host, port))
        reply["sport"] = k.getsockname()[1]
        conn, _ = listener.accept()
        conn.close()
        k.close()
    listener.close()
print(json.dumps(out))
"""


def test_the_agent_survives_malformed_requests_and_sets_the_isn(sl: Any, user: User, running: Agent) -> None:
    from scripts.lib.stealthlab import syns

    isn4, isn6 = 1 + secrets.randbelow((1 << 32) - 1), 1 + secrets.randbelow((1 << 32) - 1)
    with sl.cli.capture(f"tcp port {LISTEN_PORT}", iface="lo") as cap:
        r = user.run(["python3", "-c", _PROBE, str(running.socket), str(isn4), str(isn6), str(LISTEN_PORT)])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    refused = {"status": "01", "fds": 0, "closed": True}
    for case in ("short", "long", "oversized", "magic", "family5", "family0", "pad", "isn0"):
        assert out[case] == refused, (case, out[case])
    assert out["with_fd"] == {**refused, "fd_closed_by_agent": True}, out["with_fd"]
    assert out["while_silent"] == {"status": "00", "fds": 1}, out["while_silent"]
    assert out["after_16_closed"] is True
    assert out["silent_end"] == "" and 1.9 <= out["silent_kept"] <= 4.5, out  # closed after ~2 s idle
    assert running.alive()
    for fam, isn, dst in ((4, isn4, "127.0.0.1"), (6, isn6, "::1")):
        good = out[f"good{fam}"]
        assert good["status"] == "00" and good["fds"] == 1, good
        assert good["kind"] == [True, True, True] and good["repair"] == "denied", good
        sent = [p for p in syns(cap.packets(), dst, LISTEN_PORT) if p["TCP"].sport == good["sport"]]
        assert sent and {p["TCP"].seq for p in sent} == {isn}, (fam, isn, [p["TCP"].seq for p in sent])
    assert running.log.read_text().count("malformed request") >= 9


def test_a_host_alias_finds_its_profile(sl: Any, venv: Path, group: tuple[str, int], top: Path,
                                        running: Agent) -> None:
    u = make_user(sl, venv, group[1], top, running, "home-alias")
    u.import_profile(sl.lab.tmp / "alias.profile.toml", ALIAS)  # only under the alias
    listed = u.stealth("client", "list")
    assert listed.startswith(f"{ALIAS}  profile=alias") and len(listed.splitlines()) == 1, listed
    block = u.ssh_config("alias", ALIAS, "--hostname", sl.srv.ip4).read_text()
    assert f"Host {ALIAS}\n    HostName {sl.srv.ip4}\n    User root\n" in block, block
    # the address alone has no profile here: it is the alias (ssh's %n) that finds it
    line = one_line(u.connect(sl.srv.ip4, "22"))
    assert "no stealth profile" in line, line
    r = u.ssh("alias", ALIAS)
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stderr
    assert u.last_used(ALIAS) == 1


@contextlib.contextmanager
def netns_hosts(ns: str, text: str) -> Iterator[None]:
    """/etc/netns/NS/hosts, which `ip netns exec` mounts over /etc/hosts; removed afterwards."""
    base = Path("/etc/netns")
    made_base = not base.exists()
    folder = base / ns
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / "hosts").write_text(text)
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if made_base:
            with contextlib.suppress(OSError):
                base.rmdir()


def test_a_dual_stack_name_whose_first_address_is_a_black_hole(sl: Any, user: User, running: Agent) -> None:
    from scripts.lib.stealthlab import replies, syns

    route = ["ip", "-6", "route", "add", "2001:db8:99::/64", "via", sl.atk.ip6]
    drop = ["-t", "raw", "-I", "PREROUTING", "-d", "2001:db8:99::/64", "-j", "DROP"]
    sl.cli.run(route)
    sl.atk.run(["ip6tables", *drop])
    hosts = f"127.0.0.1 localhost\n::1 localhost\n{BLACKHOLE6} {DUAL_NAME}\n{sl.srv.ip4} {DUAL_NAME}\n"
    try:
        with netns_hosts(sl.cli.ns, hosts):
            # glibc's order (RFC 6724) puts the routed IPv6 address first
            resolved = sl.cli.run(["getent", "ahosts", DUAL_NAME]).stdout.splitlines()
            order = [line.split()[0] for line in resolved if "STREAM" in line]
            assert order == [BLACKHOLE6, sl.srv.ip4], order
            user.import_profile(sl.lab.tmp / "nobody.profile.toml", DUAL_NAME)
            user.ssh_config("dual", DUAL_NAME)
            before = user.last_used(DUAL_NAME)
            with sl.cli.capture("tcp port 22") as cap:
                t0 = time.monotonic()
                r = user.ssh("dual", DUAL_NAME)
                took = time.monotonic() - t0
    finally:
        sl.cli.run(["ip", "-6", "route", "del", "2001:db8:99::/64"], check=False)
        sl.atk.run(["ip6tables", *["-D" if a == "-I" else a for a in drop]], check=False)
    assert not Path(f"/etc/netns/{sl.cli.ns}").exists()
    assert r.returncode == 0 and r.stdout.strip() == ANSWER, r.stderr
    assert 2.4 <= took <= 7, took  # it gave the black hole ~2.5 s, then went on
    packets = cap.packets()
    to6, to4 = syns(packets, BLACKHOLE6, 22), syns(packets, sl.srv.ip4, 22)
    assert to6 and to4 and to6[0].time < to4[0].time, (len(to6), len(to4))
    assert replies(packets, BLACKHOLE6) == []
    # the unanswered knock went again to the next address: one counter for the whole login
    assert {p["TCP"].seq for p in to6} == {to4[0]["TCP"].seq}
    assert user.last_used(DUAL_NAME) == before + 1
