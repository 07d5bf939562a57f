# Why: drops leave stealth/nfqueue.py as NFQNL_MSG_VERDICT_BATCH messages, and the kernel applies such a
# verdict to every packet still waiting with an id up to the given one: a batch sent at the wrong moment
# would silently drop a held knock or a packet that must be accepted. These tests run the real server
# against the real kernel queue. The server is stopped (SIGSTOP) while a burst is queued, so the whole
# burst is read in one drain with knocks held for group commit amid junk, at the places where a wrong
# batch would reach them; then it is resumed and every packet's fate is checked from the outside.
import contextlib
import os
import random
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from stealth.constants import DROP_BATCH_MAX
from stealth.nfqueue import verdict_batch_message
from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

QUEUE = 50
OPTS = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]


# the per-prefix SYN limit out of the way: every junk SYN of a burst must reach the queue
sl = lab_fixture("batch", ("alice", "bob"), init_args=("--unauth", "drop", "--syn-rate", "400000"))


def queue_state(sl: "StealthLab") -> tuple[int, int, int, int]:
    """(waiting for a verdict, dropped: queue full, dropped: socket full, ids handed out) of our queue."""
    for line in sl.srv.run(["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout.splitlines():
        f = [int(x) for x in line.split()]
        if f[0] == QUEUE:
            return f[2], f[5], f[6], f[7]
    raise AssertionError("queue not bound")


def accepted_syns(sl: "StealthLab") -> int:
    """SYNs that came back from the queue with the accept mark (the mangle chain's CONNMARK rule counts
    them on their second pass, after the verdict REPEAT)."""
    text = sl.srv.run(["iptables", "-t", "mangle", "-L", f"STEALTH-{QUEUE}", "-v", "-x", "-n"]).stdout
    return sum(int(line.split()[0]) for line in text.splitlines() if "CONNMARK" in line)


@contextlib.contextmanager
def stopped(sl: "StealthLab") -> Iterator[None]:
    """The server stopped for the block (the kernel keeps queueing), resumed even on failure."""
    assert sl.server_proc is not None
    pid = sl.server_proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def queue_burst(sl: "StealthLab", packets: list[bytes], src_host: Any = None) -> None:
    """Send `packets` (in order) into the stopped server's queue; wait until every one is queued."""
    from scripts.lib.netlab import send_raw, wait_for

    waiting0 = queue_state(sl)[0]
    send_raw(src_host or sl.atk, *packets)
    wait_for(lambda: queue_state(sl)[0] >= waiting0 + len(packets), timeout=10, what="the burst to queue")
    assert queue_state(sl)[0] == waiting0 + len(packets)


def wait_drained(sl: "StealthLab") -> None:
    from scripts.lib.netlab import wait_for

    wait_for(lambda: queue_state(sl)[0] == 0, timeout=15, what="the queue to drain")


def junk(sl: "StealthLab", rng: random.Random, n: int, v6: bool = False) -> list[bytes]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    out = []
    for sport in rng.sample(range(1024, 65536), n):  # distinct: one connection attempt each
        ip = IPv6(src=sl.atk.ip6, dst=sl.srv.ip6) if v6 else IP(src=sl.atk.ip4, dst=sl.srv.ip4)
        tcp = TCP(sport=sport, dport=22, seq=rng.getrandbits(32), flags="S", options=OPTS)
        out.append(bytes(ip / tcp))
    return out


def knocks(sl: "StealthLab", name: str, counters: range) -> list[tuple[Any, bytes]]:
    """(knock, raw SYN) for `name`'s counters, from the client's address (sent by the attacker host, so
    that one process puts the whole burst on the wire in order; the SYN-ACK goes to the client)."""
    from scapy.layers.inet import IP, TCP
    from stealth_connect.profiles import load_profile

    from stealth.core.token import derive

    prof = load_profile(sl.client_dirs[name] / "hosts" / f"{sl.srv.ip4}.toml")
    out = []
    for c in counters:
        k = derive(prof.key, prof.binding, 22, c)
        out.append((k, bytes(IP(src=sl.cli.ip4, dst=sl.srv.ip4) / TCP(sport=k.sport, dport=22, seq=k.isn,
                                                                       flags="S", options=OPTS))))
    return out


def test_verdict_batch_message_layout() -> None:
    """nlmsghdr (32 bytes, NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST), nfgenmsg
    (AF_UNSPEC, version 0, queue 50 big-endian), NFQA_VERDICT_HDR (len 12, type 2): NF_DROP, id."""
    import struct

    msg = verdict_batch_message(50, 0x01020304)
    assert msg == (struct.pack("=IHHII", 32, 0x0303, 1, 0, 0) + bytes([0, 0, 0, 50])
                   + struct.pack("=HH", 12, 2) + bytes([0, 0, 0, 0, 1, 2, 3, 4]))


@pytest.mark.privileged
def test_junk_burst_is_dropped_and_every_packet_gets_a_verdict(sl: "StealthLab") -> None:
    from scripts.lib.netlab import wait_for

    rng = random.Random(4001)  # noqa: S311 -- reproducible test input, not a secret
    burst = junk(sl, rng, 3 * DROP_BATCH_MAX + 7)  # several full batches and a partial one
    waiting0, full0, sock0, ids0 = queue_state(sl)
    accepted0 = accepted_syns(sl)
    with sl.atk.capture("tcp") as cap:
        with stopped(sl):
            queue_burst(sl, burst)
        wait_drained(sl)
    waiting, full, sock, ids = queue_state(sl)
    assert waiting0 == 0 and waiting == 0  # no packet left without a verdict
    assert (full, sock) == (full0, sock0)  # nothing lost at the queue: every SYN got a verdict from us
    assert ids - ids0 == len(burst)
    assert accepted_syns(sl) == accepted0  # nothing accepted
    assert [p for p in cap.packets() if p.haslayer("IP") and p["IP"].src == sl.srv.ip4] == []  # silence
    assert sl.server_proc is not None and sl.server_proc.poll() is None
    wait_for(lambda: sum(sl.status()["counts"].values()) >= len(burst), what="the status file")
    assert sl.status()["counts"].get("internal_error", 0) == 0  # no batch failed and fell back


@pytest.mark.privileged
def test_held_knocks_amid_junk_are_never_covered_by_a_batch(sl: "StealthLab") -> None:
    """Knocks are held until their counters are committed; junk after them is collected for a batch.
    The layout puts a knock 10 packets before a batch fills up (a batch sent while it is held would
    drop it), knocks with junk between them at the end of the drain (a batch before the held verdicts
    would drop them), and a knock as the very last packet."""
    from scripts.lib.stealthlab import replies

    rng = random.Random(4002)  # noqa: S311 -- reproducible test input, not a secret
    k = knocks(sl, "bob", range(1, 6))
    burst = [
        *junk(sl, rng, DROP_BATCH_MAX - 10), k[0][1], *junk(sl, rng, 200),
        k[1][1], *junk(sl, rng, DROP_BATCH_MAX + 50),
        k[2][1], *junk(sl, rng, 5), k[3][1], *junk(sl, rng, 3), k[4][1],
    ]
    accepted0 = accepted_syns(sl)
    full0, sock0 = queue_state(sl)[1:3]
    with sl.cli.capture("tcp port 22") as cap:
        with stopped(sl):
            queue_burst(sl, burst)
        wait_drained(sl)
    answered = {(p["TCP"].dport, p["TCP"].ack) for p in replies(cap.packets(), sl.srv.ip4, 22)
                if str(p["TCP"].flags) == "SA"}
    assert answered == {(knock.sport, (knock.isn + 1) % 2**32) for knock, _ in k}  # each knock, once
    assert accepted_syns(sl) == accepted0 + len(k)
    assert queue_state(sl)[1:3] == (full0, sock0)
    assert queue_state(sl)[0] == 0


@pytest.mark.privileged
def test_real_login_whose_syn_is_queued_amid_junk(sl: "StealthLab") -> None:
    """The client's own kernel SYN waits in the queue between two bursts of junk; ssh gets in."""
    import subprocess

    from scripts.lib.netlab import send_raw, wait_for

    rng = random.Random(4003)  # noqa: S311 -- reproducible test input, not a secret
    before, after = junk(sl, rng, DROP_BATCH_MAX // 2), junk(sl, rng, DROP_BATCH_MAX + 100)
    accepted0 = accepted_syns(sl)
    argv = sl.ssh_argv("alice", sl.srv.ip4, command="echo batch-ok", connect_timeout=30)
    with stopped(sl):
        queue_burst(sl, before)
        ssh = sl.cli.popen(argv, stdin=subprocess.DEVNULL)
        try:
            wait_for(lambda: queue_state(sl)[0] >= len(before) + 1, timeout=10, what="the client's SYN")
            send_raw(sl.atk, *after)
        except BaseException:
            ssh.kill()
            raise
    out, err = ssh.communicate(timeout=60)
    assert ssh.returncode == 0, err
    assert out.strip() == "batch-ok"
    assert accepted_syns(sl) >= accepted0 + 1
    wait_drained(sl)


@pytest.fixture(scope="module")
def mixed() -> Iterator[Any]:
    """A server that answers unauthenticated IPv4 with the kernel's RST (an *accept* verdict: the packet
    goes on to REJECT) and drops unauthenticated IPv6 (the host's IPv6 INPUT policy is DROP)."""
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="batchmix", clients=(), start=False,
                     init_args=("--unauth", "auto", "--syn-rate", "400000")) as lab:
        lab.srv.run(["ip6tables", "-P", "INPUT", "DROP"])
        mac = lab.srv.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
        # the server ignores neighbour solicitations now: the attacker knows its address already
        lab.atk.run(["ip", "-6", "neigh", "replace", lab.srv.ip6, "lladdr", mac, "dev", "eth0",
                     "nud", "permanent"])
        lab.start_server()
        yield lab


def rule_packets(host: Any, tool: str, chain: str, target: str) -> int:
    """Packets counted by the rules of the filter table's `chain` that jump to `target` (for INPUT and
    our chain: every TCP packet the queue let on towards the kernel's stack)."""
    text = host.run([tool, "-t", "filter", "-L", chain, "-v", "-x", "-n"]).stdout.splitlines()[2:]
    return sum(int(line.split()[0]) for line in text if line.split()[2] == target)


@pytest.mark.privileged
def test_accepts_interleaved_with_drops_are_never_covered_by_a_batch(mixed: Any) -> None:
    """IPv4 junk gets an accept verdict (the kernel then sends its RST), IPv6 junk a drop; in one drain
    they alternate, so a batch covering an accept would keep that SYN from the kernel. Counted by the
    kernel's own rules (a capture can miss some of a fast burst of RSTs)."""
    sl = mixed
    rng = random.Random(4004)  # noqa: S311 -- reproducible test input, not a secret
    v4, v6 = junk(sl, rng, DROP_BATCH_MAX + 300), junk(sl, rng, DROP_BATCH_MAX + 300, v6=True)
    burst = [p for pair in zip(v4, v6, strict=True) for p in pair]
    full0, sock0 = queue_state(sl)[1:3]
    passed4 = rule_packets(sl.srv, "iptables", "INPUT", f"STEALTH-{QUEUE}")
    passed6 = rule_packets(sl.srv, "ip6tables", "INPUT", f"STEALTH-{QUEUE}")
    with sl.atk.capture("ip6 and tcp") as cap:
        with stopped(sl):
            queue_burst(sl, burst)
        wait_drained(sl)
    assert rule_packets(sl.srv, "iptables", "INPUT", f"STEALTH-{QUEUE}") - passed4 == len(v4)
    assert rule_packets(sl.srv, "ip6tables", "INPUT", f"STEALTH-{QUEUE}") == passed6  # all dropped
    assert [p for p in cap.packets() if p["IPv6"].src == sl.srv.ip6] == []  # silence
    assert queue_state(sl)[1:3] == (full0, sock0)
    assert queue_state(sl)[0] == 0
