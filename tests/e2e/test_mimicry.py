# Why: property 1 (silence) on both kinds of host. With unauth = auto the protected port must answer
# every probe exactly as an unused neighbour does: nothing on a host that drops, the kernel's own RST on
# a host that resets. nmap's scan types and hping3 probes with all 64 TCP flag combinations compare the
# protected port 22 with unused ports 21 and 23, reply field by field.
import itertools
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged

FLAGS = "FSRPAU"
SCANS = ("-sS", "-sT", "-sA", "-sF", "-sN", "-sX", "-sW", "-sM")
DROP_RULES = [  # every host firewall lets loopback through; stealth hands connections to sshd over it
    ["INPUT", "-i", "lo", "-j", "ACCEPT"],
    ["INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ["INPUT", "-p", "tcp", "-j", "DROP"],
]


lab = lab_fixture("mimic", start=False, name="lab")


@pytest.fixture(params=["reset", "drop"])
def host(request: pytest.FixtureRequest, lab: "StealthLab") -> Iterator[str]:
    """The server namespace as a host that resets (Linux default) or drops unused ports; stealth runs
    with the default unauth = auto and must follow it."""
    kind: str = request.param
    if kind == "drop":
        for rule in DROP_RULES:
            lab.srv.run(["iptables", "-A", *rule])
    lab.start_server()
    try:
        assert f"ipv4:{kind}" in lab.ready_line, lab.ready_line
        yield kind
    finally:
        lab.stop_server()
        if kind == "drop":
            for rule in DROP_RULES:
                lab.srv.run(["iptables", "-D", *rule], check=False)


def lab_nmap(lab: "StealthLab", scan: str) -> dict[int, tuple[str, str]]:
    from scripts.lib.stealthlab import nmap_states

    return nmap_states(lab.atk, lab.srv.ip4, scan, "21-23", lab.lab.tmp / f"nmap{scan}.xml")


def test_login_works_and_nmap_cannot_tell_the_port_from_its_neighbours(lab: "StealthLab", host: str) -> None:
    assert lab.ssh("alice", lab.srv.ip4).returncode == 0
    for scan in SCANS:
        states = lab_nmap(lab, scan)
        assert set(states) == {21, 22, 23}, (scan, states)
        assert states[22] == states[21] == states[23], (host, scan, states)
    if host == "reset":
        assert lab_nmap(lab, "-sS")[22][0] == "closed"  # not "filtered": the fingerprint is gone


def reply_fields(probe: Any, reply: Any | None) -> tuple[Any, ...] | None:
    if reply is None:
        return None
    ip, tcp = reply["IP"], reply["TCP"]
    p = probe["TCP"]
    return (
        str(tcp.flags), tcp.window, ip.ttl, ip.id, str(ip.flags), tuple(tcp.options),
        (tcp.ack - p.seq) % 2**32 if "A" in str(tcp.flags) else None,
        tcp.seq if "A" not in str(p.flags) else (tcp.seq - p.ack) % 2**32,
        len(bytes(tcp.payload)),
    )


def test_every_flag_combination_gets_the_unused_ports_answer(lab: "StealthLab", host: str) -> None:
    combos = ["".join(c for c, on in zip(FLAGS, bits, strict=True) if on)
              for bits in itertools.product([0, 1], repeat=6)]
    with lab.atk.capture(f"tcp and host {lab.srv.ip4}") as cap:
        procs = []
        for i, flags in enumerate(combos):
            for dport, base in ((22, 20000), (23, 40000)):
                argv = ["hping3", "-c", "1", "-p", str(dport), "-s", str(base + i), "-k",
                        *[f"-{c}" for c in flags], lab.srv.ip4]
                procs.append(lab.atk.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for proc in procs:
            proc.wait(timeout=30)
        time.sleep(0.5)
    packets = cap.packets()
    sent = {p["TCP"].sport: p for p in packets if p["IP"].src == lab.atk.ip4}
    got = {p["TCP"].dport: p for p in packets if p["IP"].src == lab.srv.ip4}
    answered = 0
    for i, flags in enumerate(combos):
        probe22, probe23 = sent.get(20000 + i), sent.get(40000 + i)
        assert probe22 is not None and probe23 is not None, flags
        ours = reply_fields(probe22, got.get(20000 + i))
        theirs = reply_fields(probe23, got.get(40000 + i))
        assert ours == theirs, (host, flags or "none", ours, theirs)
        answered += theirs is not None
    if host == "reset":
        assert answered >= 32  # the kernel resets every probe without RST
    else:
        assert answered == 0
