# Why: a token passes once, yet the kernel's resends of an accepted SYN must pass. When the server's SYN-ACK
# is lost, the client's kernel resends its SYN with the same ISN and source port (and a later TCP timestamp);
# that retransmission must still get in, or a lossy link would turn into "no answer" and burn counters. The
# SYN-ACK is lost on the server's own egress with tc: an htb root whose SYN-ACK class ends in a zero-byte fifo
# (this kernel has no netem or prio qdisc, and no gact action), removed again once it has dropped exactly one
# packet.
#
# What happens on this kernel (Linux 6.18): the server's own SYN-ACK timer and the client's SYN timer
# both fire after ~1 s, and the server's timer wins by some 70 us, so its resent SYN-ACK would complete
# the handshake and the client's resent SYN would only get a second, redundant SYN-ACK. To show that the
# resent SYN itself is let in and answered, the server namespace runs with tcp_synack_retries=0: the
# server never resends a SYN-ACK on its own, so the only SYN-ACK that can leave it after the lost one is
# the answer to the client's resent SYN.
#
# The resent SYN never reaches the daemon: the accepted SYN's conntrack entry carries the mark, so the
# mangle chain's connmark ACCEPT takes it before the NFQUEUE rule. The gate's "retransmit" path (an
# exact resend with a later TSval) is for a resend that arrives after that conntrack entry is gone; it is
# covered by tests/core/test_gate.py.
import re
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged

SSH_PORT = 22


sl = lab_fixture("loss", init_args=("--unauth", "drop"))


def lose_synacks(host: Any) -> None:
    """Drop every IPv4 SYN-ACK from port 22 leaving `host`'s eth0 (TCP flags byte == 0x12, no IP options)."""
    tc = ["tc"]
    host.run([*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1"])
    for cls in ("1:1", "1:2"):
        host.run([*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", cls, "htb", "rate", "1gbit"])
    host.run([*tc, "qdisc", "add", "dev", "eth0", "parent", "1:2", "handle", "20:", "bfifo", "limit", "0"])
    host.run([*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
              "match", "ip", "protocol", "6", "0xff", "match", "ip", "sport", str(SSH_PORT), "0xffff",
              "match", "u8", "0x12", "0xff", "at", "33", "flowid", "1:2"])


def synacks_lost(host: Any) -> int:
    out = host.run(["tc", "-s", "qdisc", "show", "dev", "eth0"]).stdout
    match = re.search(r"qdisc bfifo 20:.*?dropped (\d+)", out, re.S)
    assert match, out
    return int(match.group(1))


def queued_packets(host: Any) -> int:
    """Packets the server's mangle chain has sent to NFQUEUE so far (all its NFQUEUE rules)."""
    rules = host.run(["iptables", "-w", "-t", "mangle", "-S"]).stdout
    (chain,) = set(re.findall(r"^-N (STEALTH-\d+)$", rules, re.M))
    listing = host.run(["iptables", "-w", "-t", "mangle", "-L", chain, "-n", "-v", "-x"]).stdout
    total = 0
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[0].isdigit() and fields[2] == "NFQUEUE":
            total += int(fields[0])
    return total


def tsval(tcp: Any) -> int:
    return int(dict((k, v) for k, v in tcp.options if k == "Timestamp")["Timestamp"][0])


def test_lost_synack_the_retransmitted_syn_gets_in(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import syns

    status_before = sl.status()["counts"]
    queued_before = queued_packets(sl.srv)
    knob = "/proc/sys/net/ipv4/tcp_synack_retries"
    old_retries = sl.srv.run(["cat", knob]).stdout.strip()
    sl.srv.run(["sysctl", "-qw", "net.ipv4.tcp_synack_retries=0"])
    lose_synacks(sl.srv)
    try:
        # the server's capture sees what arrives, and of what it sends only what left the qdisc
        with sl.srv.capture(f"tcp port {SSH_PORT}") as cap:
            session = sl.cli.popen(sl.ssh_argv("alice", sl.srv.ip4), stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 5
            while synacks_lost(sl.srv) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            lost = synacks_lost(sl.srv)
            # let every later SYN-ACK through
            sl.srv.run(["tc", "filter", "del", "dev", "eth0", "parent", "1:", "prio", "1"])
            out, err = session.communicate(timeout=30)
    finally:
        sl.srv.run(["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)
        sl.srv.run(["sysctl", "-qw", f"net.ipv4.tcp_synack_retries={old_retries}"], check=False)
    assert lost == 1  # exactly the first SYN-ACK was lost
    assert session.returncode == 0, err
    assert out.strip() == "stealth-ok"

    packets = cap.packets()
    knock, again = syns(packets, sl.srv.ip4, SSH_PORT)[:2]
    # the kernel's own retransmission: same port and ISN, about 1 s later, a later TCP timestamp
    assert (again["TCP"].sport, again["TCP"].seq) == (knock["TCP"].sport, knock["TCP"].seq)
    assert 0.8 < float(again.time - knock.time) < 2.0
    assert tsval(again["TCP"]) > tsval(knock["TCP"])
    answers = [p for p in packets if p["IP"].src == sl.srv.ip4 and p["TCP"].flags == "SA"]
    assert answers, "no SYN-ACK left the server"
    first = answers[0]
    assert first["TCP"].dport == knock["TCP"].sport
    assert first["TCP"].ack == (knock["TCP"].seq + 1) & 0xFFFFFFFF
    # nothing left the server before the resent SYN arrived; the answer followed it at once
    assert 0 <= float(first.time - again.time) < 0.05

    # the resent SYN passed by the conntrack mark: the daemon saw only the first SYN (one queued packet,
    # one "valid", no "retransmit")
    assert queued_packets(sl.srv) - queued_before == 1
    time.sleep(1.2)  # status.json is rewritten every second
    counts = sl.status()["counts"]
    assert counts.get("valid", 0) == status_before.get("valid", 0) + 1
    assert counts.get("retransmit", 0) == status_before.get("retransmit", 0)
