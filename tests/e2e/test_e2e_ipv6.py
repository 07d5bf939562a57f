# Why: the end-to-end claims of tests/e2e/test_e2e_ssh.py, over IPv6. The server installs ip6tables rules
# next to its iptables ones and the lab's profiles are imported for both addresses, so the same real
# sshd, `stealth server run` and OpenSSH client are driven over 2001:db8:5e::/64 here. Every "no reply" is
# read from a tcpdump capture.
import secrets
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged

SSH_PORT = 22


sl = lab_fixture("e2e6", init_args=("--unauth", "drop"))


def test_login_through_proxycommand(sl: "StealthLab") -> None:
    from stealth_connect.profiles import ClientStore, load_profile

    from scripts.lib.stealthlab import replies, syns
    from stealth.core.token import derive

    with sl.cli.capture(f"ip6 and tcp port {SSH_PORT}") as cap:
        result = sl.ssh("alice", sl.srv.ip6, extra=("-6",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    packets = cap.packets()
    prof = load_profile(ClientStore(sl.client_dirs["alice"]).find(sl.srv.ip6))
    knock = derive(prof.key, prof.binding, SSH_PORT, sl.counter("alice"))
    first = syns(packets, sl.srv.ip6, SSH_PORT)[0]
    assert first["IPv6"].src == sl.cli.ip6
    assert (first["TCP"].seq, first["TCP"].sport) == (knock.isn, knock.sport)
    assert 32768 <= first["TCP"].sport <= 60999 and first["TCP"].sport % 2 == 0
    assert any(p["TCP"].flags == "SA" for p in replies(packets, sl.srv.ip6, SSH_PORT))


def test_login_through_fdpass(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies

    with sl.cli.capture(f"ip6 and tcp port {SSH_PORT}") as cap:
        result = sl.ssh("alice", sl.srv.ip6, fdpass=True, extra=("-6",))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stealth-ok"
    assert replies(cap.packets(), sl.srv.ip6, SSH_PORT)


def test_without_knock_ssh_and_nc_get_no_reply(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies, syns

    with sl.cli.capture(f"tcp port {SSH_PORT}") as cap:
        plain = sl.ssh("alice", sl.srv.ip6, knock=False, connect_timeout=3, extra=("-6",))
        nc = sl.cli.run(["nc", "-6", "-z", "-w", "3", sl.srv.ip6, str(SSH_PORT)], check=False)
    assert plain.returncode != 0
    assert nc.returncode != 0
    packets = cap.packets()
    assert len(syns(packets, sl.srv.ip6, SSH_PORT)) >= 2  # both really knocked on the door
    assert replies(packets, sl.srv.ip6) == []


def _recorded_knock(sl: "StealthLab") -> Any:
    """Log in once over IPv6 and return the knock SYN as it appeared on the wire."""
    from scripts.lib.stealthlab import syns

    with sl.cli.capture(f"ip6 and tcp port {SSH_PORT}") as cap:
        result = sl.ssh("alice", sl.srv.ip6, extra=("-6",))
    assert result.returncode == 0, result.stderr
    return syns(cap.packets(), sl.srv.ip6, SSH_PORT)[0]


def test_replayed_knock_gets_no_reply_from_client_or_attacker(sl: "StealthLab") -> None:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    from scripts.lib.netlab import send_raw
    from scripts.lib.stealthlab import replies

    syn = _recorded_knock(sl)
    original = bytes(syn["IPv6"])
    moved = IPv6(original)
    moved.src = sl.atk.ip6
    del moved[TCP].chksum  # recomputed over the new pseudo-header when serialised
    moved_bytes = bytes(moved)
    assert TCP(moved_bytes[40:]).chksum != syn["TCP"].chksum
    before = sl.status()["counts"].get("replay", 0)
    with sl.cli.capture("tcp") as cli_cap, sl.atk.capture("tcp") as atk_cap, \
            sl.srv.capture(f"tcp port {SSH_PORT}") as srv_cap:
        send_raw(sl.cli, original)  # byte-exact replay from the client's own address and port
        send_raw(sl.atk, moved_bytes)  # the same token from the attacker's address
        time.sleep(1.5)
    # both replays reached the server, and neither got anything back
    arrived = {(p["IPv6"].src, p["TCP"].seq) for p in srv_cap.packets() if p.haslayer("TCP")}
    assert {(sl.cli.ip6, syn["TCP"].seq), (sl.atk.ip6, syn["TCP"].seq)} <= arrived
    assert replies(cli_cap.packets(), sl.srv.ip6) == []
    assert replies(atk_cap.packets(), sl.srv.ip6) == []
    time.sleep(1.2)  # status.json is rewritten every second
    assert sl.status()["counts"].get("replay", 0) >= before + 2


def _raw_syn(src: str, dst: str, sport: int, seq: int) -> bytes:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    return bytes(IPv6(src=src, dst=dst, hlim=64) / TCP(sport=sport, dport=SSH_PORT, flags="S", seq=seq,
                                                       window=64240))


def test_unauthenticated_syn_from_client_ip_while_session_open(sl: "StealthLab") -> None:
    from scripts.lib.netlab import send_raw
    from scripts.lib.stealthlab import replies, syns

    session = sl.cli.popen(sl.ssh_argv("alice", sl.srv.ip6, command="sleep 6; echo still-open",
                                       extra=("-6",)), stdin=subprocess.DEVNULL)
    time.sleep(2.5)  # logged in and sleeping
    with sl.cli.capture(f"ip6 and tcp port {SSH_PORT} and ip6[53] & 0x02 != 0") as cap:
        nc = sl.cli.run(["nc", "-6", "-z", "-w", "3", sl.srv.ip6, str(SSH_PORT)], check=False)
        for _ in range(3):  # hping3 has no IPv6: bare SYNs from the client's address, random port and ISN
            send_raw(sl.cli, _raw_syn(sl.cli.ip6, sl.srv.ip6, 32768 + secrets.randbelow(28232),
                                      1 + secrets.randbelow((1 << 32) - 1)))
            time.sleep(0.2)
    out, err = session.communicate(timeout=30)
    assert session.returncode == 0, err
    assert out.strip() == "still-open"
    assert nc.returncode != 0
    packets = cap.packets()
    assert len(syns(packets, sl.srv.ip6, SSH_PORT)) >= 4
    assert replies(packets, sl.srv.ip6) == []


def test_nothing_stays_open_after_logout(sl: "StealthLab") -> None:
    from scripts.lib.netlab import send_raw
    from scripts.lib.stealthlab import replies

    syn = _recorded_knock(sl)  # that session has ended
    time.sleep(0.5)
    with sl.cli.capture(f"ip6 and tcp port {SSH_PORT}") as cap:
        send_raw(sl.cli, bytes(syn["IPv6"]))  # the same 4-tuple and ISN again
        nc = sl.cli.run(["nc", "-6", "-z", "-w", "3", sl.srv.ip6, str(SSH_PORT)], check=False)
        plain = sl.ssh("alice", sl.srv.ip6, knock=False, connect_timeout=3, extra=("-6",))
    assert nc.returncode != 0 and plain.returncode != 0
    assert replies(cap.packets(), sl.srv.ip6) == []
    conntrack = sl.srv.run(["conntrack", "-L", "-f", "ipv6", "-p", "tcp", "--dport", str(SSH_PORT),
                            "--state", "ESTABLISHED"], check=False)
    assert "ESTABLISHED" not in conntrack.stdout


def _nmap_states(sl: "StealthLab", scan: str, ports: str) -> dict[int, tuple[str, str]]:
    from scripts.lib.stealthlab import nmap_states

    return nmap_states(sl.atk, sl.srv.ip6, scan, ports, sl.lab.tmp / f"nmap6{scan}.xml", ("-6",))


def test_nmap_sees_protected_port_like_unused_neighbours(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies

    # a host that drops TCP to unused ports (our chain sits before these rules); ICMPv6 is left alone so
    # neighbour discovery keeps working
    established = ["INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    sl.srv.run(["ip6tables", "-A", *established])
    sl.srv.run(["ip6tables", "-A", "INPUT", "-p", "tcp", "-j", "DROP"])
    try:
        with sl.atk.capture("ip6 and tcp") as cap:
            for scan in ("-sS", "-sT", "-sA", "-sF", "-sN", "-sX"):
                states = _nmap_states(sl, scan, "21-23")
                assert set(states) == {21, 22, 23}, (scan, states)
                assert states[22] == states[21] == states[23], (scan, states)
                expected = "filtered" if scan in ("-sS", "-sT", "-sA") else "open|filtered"
                assert states[22][0] == expected, (scan, states)
        assert replies(cap.packets(), sl.srv.ip6) == []  # the scans really got nothing back
    finally:
        sl.srv.run(["ip6tables", "-D", "INPUT", "-p", "tcp", "-j", "DROP"], check=False)
        sl.srv.run(["ip6tables", "-D", *established], check=False)
