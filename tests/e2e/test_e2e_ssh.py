# Why: the product as a user meets it. A real sshd behind `stealth server run` in one namespace, the real
# OpenSSH client through stealth-connect in another, an attacker in a third; every claim is checked
# against what tcpdump saw come back on the wire.
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged

SSH_PORT = 22


sl = lab_fixture("e2e", init_args=("--unauth", "drop"))


def test_login_through_proxycommand(sl: "StealthLab") -> None:
    from stealth_connect.profiles import load_profile

    from scripts.lib.stealthlab import replies, syns
    from stealth.core.token import derive

    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        result = sl.ssh("alice", sl.srv.ip4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    packets = cap.packets()
    # the knock on the wire is the token of the counter the client used, from an even ephemeral port
    prof = load_profile(sl.client_dirs["alice"] / "hosts" / f"{sl.srv.ip4}.toml")
    knock = derive(prof.key, prof.binding, SSH_PORT, sl.counter("alice"))
    first = syns(packets, sl.srv.ip4, SSH_PORT)[0]["TCP"]
    assert (first.seq, first.sport) == (knock.isn, knock.sport)
    assert 32768 <= first.sport <= 60999 and first.sport % 2 == 0
    assert any(p["TCP"].flags == "SA" for p in replies(packets, sl.srv.ip4, SSH_PORT))


def test_login_through_fdpass(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies

    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        result = sl.ssh("alice", sl.srv.ip4, fdpass=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    assert replies(cap.packets(), sl.srv.ip4, SSH_PORT)


def test_login_over_ipv6(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies

    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        result = sl.ssh("alice", sl.srv.ip6)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    assert replies(cap.packets(), sl.srv.ip6, SSH_PORT)


def test_without_knock_ssh_and_nc_get_no_reply(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies, syns

    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        plain = sl.ssh("alice", sl.srv.ip4, knock=False, connect_timeout=3)
        nc = sl.cli.run(["nc", "-z", "-w", "3", sl.srv.ip4, str(SSH_PORT)], check=False)
    assert plain.returncode != 0
    assert nc.returncode != 0
    packets = cap.packets()
    assert len(syns(packets, sl.srv.ip4, SSH_PORT)) >= 2  # both really knocked on the door
    assert replies(packets, sl.srv.ip4) == []


def _recorded_knock(sl: "StealthLab") -> Any:
    """Log in once and return the knock SYN as it appeared on the wire."""
    from scripts.lib.stealthlab import syns

    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        assert sl.ssh("alice", sl.srv.ip4).returncode == 0
    return syns(cap.packets(), sl.srv.ip4, SSH_PORT)[0]


def test_replayed_knock_gets_no_reply_from_client_or_attacker(sl: "StealthLab") -> None:
    from scapy.layers.inet import IP, TCP

    from scripts.lib.netlab import send_raw
    from scripts.lib.stealthlab import replies

    syn = _recorded_knock(sl)
    original = bytes(syn["IP"])
    moved = IP(original)
    moved.src = sl.atk.ip4
    del moved.chksum
    del moved[TCP].chksum
    before = sl.status()["counts"].get("replay", 0)
    with sl.cli.capture("tcp") as cli_cap, sl.atk.capture("tcp") as atk_cap:
        send_raw(sl.cli, original)  # byte-exact replay from the client's own address and port
        send_raw(sl.atk, bytes(moved))  # the same token from the attacker's address
        time.sleep(1.5)
    assert replies(cli_cap.packets(), sl.srv.ip4) == []
    assert replies(atk_cap.packets(), sl.srv.ip4) == []
    time.sleep(1.2)  # status.json is rewritten every second
    assert sl.status()["counts"].get("replay", 0) >= before + 2


def test_unauthenticated_syn_from_client_ip_while_session_open(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies

    session = sl.cli.popen(sl.ssh_argv("alice", sl.srv.ip4, command="sleep 6; echo still-open"),
                           stdin=subprocess.DEVNULL)
    time.sleep(2.5)  # logged in and sleeping
    with sl.cli.capture(f"tcp port {SSH_PORT} and tcp[tcpflags] & tcp-syn != 0") as cap:
        nc = sl.cli.run(["nc", "-z", "-w", "3", sl.srv.ip4, str(SSH_PORT)], check=False)
        sl.cli.run(["hping3", "-S", "-c", "3", "-i", "u200000", "-p", str(SSH_PORT), sl.srv.ip4], check=False)
    out, err = session.communicate(timeout=30)
    assert session.returncode == 0, err
    assert out.strip() == "still-open"
    assert nc.returncode != 0
    assert replies(cap.packets(), sl.srv.ip4) == []


def test_nothing_stays_open_after_logout(sl: "StealthLab") -> None:
    from scripts.lib.netlab import send_raw
    from scripts.lib.stealthlab import replies

    syn = _recorded_knock(sl)  # that session has ended
    time.sleep(0.5)
    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        send_raw(sl.cli, bytes(syn["IP"]))  # the same 4-tuple and ISN again
        nc = sl.cli.run(["nc", "-z", "-w", "3", sl.srv.ip4, str(SSH_PORT)], check=False)
        plain = sl.ssh("alice", sl.srv.ip4, knock=False, connect_timeout=3)
    assert nc.returncode != 0 and plain.returncode != 0
    assert replies(cap.packets(), sl.srv.ip4) == []
    conntrack = sl.srv.run(
        ["conntrack", "-L", "-p", "tcp", "--dport", str(SSH_PORT), "--state", "ESTABLISHED"], check=False
    )
    assert "ESTABLISHED" not in conntrack.stdout


def test_revoked_client_gets_no_reply(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies, tool

    sl.enroll("bob")
    time.sleep(2.5)  # the running server picks up the new client from clients.jsonl, no restart
    assert sl.ssh("bob", sl.srv.ip4).returncode == 0
    sl.stealth("server", "revoke", "bob", "--state-dir", str(sl.state_dir))
    time.sleep(2.5)  # the server notices the changed clients.jsonl without a restart
    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        connect = sl.cli.run(
            [tool("stealth-connect"), "--state-dir", str(sl.client_dirs["bob"]), "--timeout", "1.5",
             "--retries", "1", sl.srv.ip4, str(SSH_PORT)],
            check=False, stdin=subprocess.DEVNULL, timeout=30,
        )
    assert connect.returncode == 1
    assert "no answer" in connect.stderr
    assert replies(cap.packets(), sl.srv.ip4) == []
    assert sl.ssh("alice", sl.srv.ip4).returncode == 0  # others are unaffected


def _nmap_states(sl: "StealthLab", scan: str, ports: str) -> dict[int, tuple[str, str]]:
    from scripts.lib.stealthlab import nmap_states

    return nmap_states(sl.atk, sl.srv.ip4, scan, ports, sl.lab.tmp / f"nmap{scan}.xml", ())


def test_nmap_sees_protected_port_like_unused_neighbours(sl: "StealthLab") -> None:
    # a host that drops packets to unused ports (our chain sits before these rules)
    established = ["INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    sl.srv.run(["iptables", "-A", *established])
    sl.srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP"])
    try:
        for scan in ("-sS", "-sT", "-sA", "-sF", "-sN", "-sX"):
            states = _nmap_states(sl, scan, "21-23")
            assert set(states) == {21, 22, 23}, (scan, states)
            assert states[22] == states[21] == states[23], (scan, states)
    finally:
        sl.srv.run(["iptables", "-D", "INPUT", "-p", "tcp", "-j", "DROP"], check=False)
        sl.srv.run(["iptables", "-D", *established], check=False)
