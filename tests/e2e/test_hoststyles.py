# Why: `unauth = auto` must follow the host whatever its firewall style, and a knock must get in on each:
# plain Linux (the kernel resets), an iptables-legacy DROP policy (stealth's own rules go through the
# default iptables, here the nft backend, so both are evaluated), a native nftables ruleset with policy
# drop (invisible to iptables), and ufw (installed from Debian, run with a private /etc/ufw). For each,
# nmap's 8 scan types see port 22 exactly like its unused neighbours, and ssh through stealth works.
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.privileged

SCANS = ("-sS", "-sT", "-sA", "-sF", "-sN", "-sX", "-sW", "-sM")
NFT_HOST = """
table inet hostfw {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related accept
    iif lo accept
    meta l4proto ipv6-icmp accept
    tcp dport 22 accept
  }
}
"""


def plain(lab: Any) -> None:
    pass


def legacy_drop(lab: Any) -> None:
    lab.srv.run(["ip6tables-legacy", "-A", "INPUT", "-p", "ipv6-icmp", "-j", "ACCEPT"])  # neighbour discovery
    for tool in ("iptables-legacy", "ip6tables-legacy"):
        lab.srv.run([tool, "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j",
                     "ACCEPT"])
        lab.srv.run([tool, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        lab.srv.run([tool, "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"])
        lab.srv.run([tool, "-P", "INPUT", "DROP"])


def native_nft(lab: Any) -> None:
    lab.srv.run(["nft", "-f", "-"], input=NFT_HOST)
    assert "-P INPUT ACCEPT" in lab.srv.run(["iptables", "-S", "INPUT"]).stdout  # iptables sees nothing


def ufw(lab: Any) -> None:
    import shutil

    etc = lab.lab.tmp / "etc-ufw"
    shutil.copytree("/etc/ufw", etc, symlinks=True)
    shutil.copy("/etc/default/ufw", lab.lab.tmp / "default-ufw")
    script = (f"mount --make-rprivate / && mount --bind {etc} /etc/ufw && "
              f"mount --bind {lab.lab.tmp / 'default-ufw'} /etc/default/ufw && "
              "ufw allow 22/tcp && ufw --force enable")
    lab.srv.run(["unshare", "-m", "sh", "-c", script], timeout=120)
    assert "-P INPUT DROP" in lab.srv.run(["iptables", "-S", "INPUT"]).stdout


STYLES: dict[str, tuple[Callable[[Any], None], str]] = {
    "plain": (plain, "reset"), "iptables-legacy drop": (legacy_drop, "drop"),
    "native nftables drop": (native_nft, "drop"), "ufw": (ufw, "drop"),
}


@pytest.fixture(params=list(STYLES))
def styled(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    setup, mode = STYLES[request.param]
    with stealth_lab(server_id="styles", clients=("alice",), start=False) as lab:
        setup(lab)
        lab.start_server()
        with contextlib.ExitStack():
            yield lab, mode


def test_auto_follows_the_host_and_scans_cannot_tell_the_port(styled: tuple[Any, str]) -> None:
    from scripts.lib.stealthlab import nmap_states

    lab, mode = styled
    assert f"unauth=ipv4:{mode},ipv6:{mode}" in lab.ready_line, lab.ready_line
    assert lab.ssh("alice", lab.srv.ip4).returncode == 0
    assert lab.ssh("alice", lab.srv.ip6).returncode == 0
    for scan in SCANS:
        states = nmap_states(lab.atk, lab.srv.ip4, scan, "21-23", lab.lab.tmp / f"nmap{scan}.xml")
        assert set(states) == {21, 22, 23}, (scan, states)
        assert states[22] == states[21] == states[23], (mode, scan, states)
    expected = "closed" if mode == "reset" else "filtered"
    assert nmap_states(lab.atk, lab.srv.ip4, "-sS", "22", lab.lab.tmp / "last.xml")[22][0] == expected
