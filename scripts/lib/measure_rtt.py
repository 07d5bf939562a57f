# Why: in reset mode an invalid SYN to the protected port is answered by the kernel after a trip through
# the userspace queue (the daemon must see it to know it is invalid), while an unused neighbour's RST
# comes straight from the kernel. This measures both RTT distributions from an attacker namespace:
# SYNs to the two ports interleaved, one every INTERVAL, timed by tcpdump's nanosecond kernel timestamps
# on the attacker's interface (no sender jitter in the figures), and a two-sample Kolmogorov-Smirnov test
# of whether an observer can tell the two apart (and with how few probes). Writes benchmarks/rtt.json
# with the command.
import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from scripts.lib.netlab import send_raw
from scripts.lib.stealthlab import stealth_lab, write_results

INTERVAL_SECONDS = 0.002
BASE_SPORT = {22: 20000, 23: 40000}


def probes(sl: Any, count: int) -> dict[int, list[float]]:
    """RTTs in ms per port, from one capture of `count` interleaved SYNs per port."""
    from scapy.layers.inet import IP, TCP

    path = sl.lab.tmp / "rtt.pcap"
    cap = sl.atk.popen(["tcpdump", "-U", "--immediate-mode", "--time-stamp-precision=nano", "-n", "-i",
                        "eth0", "-w", str(path), f"tcp and host {sl.srv.ip4}"])
    assert cap.stderr is not None
    cap.stderr.readline()
    packets = []
    for i in range(count):
        pair = [bytes(IP(src=sl.atk.ip4, dst=sl.srv.ip4) / TCP(sport=BASE_SPORT[port] + i % 20000, dport=port,
                                                                flags="S", seq=i + 1)) for port in (22, 23)]
        packets += pair if i % 2 else pair[::-1]  # alternate which port goes first, against drift
    send_raw(sl.atk, *packets, gap=INTERVAL_SECONDS)
    time.sleep(0.5)
    cap.terminate()
    cap.wait(timeout=10)
    return _rtts(path, sl.srv.ip4)


def _rtts(path: Path, server: str) -> dict[int, list[float]]:
    from scapy.layers.inet import IP, TCP  # noqa: F401 -- registers the layers rdpcap decodes
    from scapy.layers.l2 import Ether  # noqa: F401
    from scapy.utils import rdpcap

    sent: dict[tuple[int, int], float] = {}
    out: dict[int, list[float]] = {22: [], 23: []}
    for p in rdpcap(str(path)):
        if not p.haslayer("TCP"):
            continue
        ip, tcp = p["IP"], p["TCP"]
        if ip.dst == server and tcp.flags == "S":
            sent[(tcp.dport, tcp.sport)] = float(p.time)
        elif ip.src == server and "R" in str(tcp.flags):
            t0 = sent.pop((tcp.sport, tcp.dport), None)
            if t0 is not None:
                out[tcp.sport].append((float(p.time) - t0) * 1000)
    return out


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"n": len(s), "p10_ms": round(s[len(s) // 10], 4), "p50_ms": round(statistics.median(s), 4),
            "p90_ms": round(s[9 * len(s) // 10], 4), "p99_ms": round(s[99 * len(s) // 100], 4),
            "mean_ms": round(statistics.fmean(s), 4)}


def ks_test(a: list[float], b: list[float]) -> dict[str, float]:
    """Two-sample Kolmogorov-Smirnov: the largest gap D between the empirical CDFs, and its asymptotic
    p-value (small p: an observer with this many probes tells the ports apart)."""
    xs, ys = sorted(a), sorted(b)
    i = j = 0
    d = 0.0
    while i < len(xs) and j < len(ys):
        v = min(xs[i], ys[j])
        while i < len(xs) and xs[i] <= v:
            i += 1
        while j < len(ys) and ys[j] <= v:
            j += 1
        d = max(d, abs(i / len(xs) - j / len(ys)))
    n = len(xs) * len(ys) / (len(xs) + len(ys))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return {"ks_d": round(d, 4), "ks_p": round(min(1.0, max(0.0, p)), 6)}


def probes_to_tell_apart(a: list[float], b: list[float], trials: int = 200) -> int | None:
    """The fewest probes per port with which a KS test (p < 0.01) tells the two ports apart in at least
    95% of random draws from the measured RTTs; None if not even all of them do."""
    import random

    rng = random.Random(1)  # noqa: S311 -- resampling for a statistic, not a secret
    for n in (3, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000):
        if n > min(len(a), len(b)):
            return None
        hits = sum(ks_test(rng.sample(a, n), rng.sample(b, n))["ks_p"] < 0.01 for _ in range(trials))
        if hits >= 0.95 * trials:
            return n
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=1000, help="SYNs per port")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/rtt.json"))
    args = parser.parse_args()
    reset = ("--unauth", "reset", "--syn-rate", "100000")
    with stealth_lab(server_id="rtt", clients=(), init_args=reset) as sl:
        rtts = probes(sl, args.probes)
    write_results(args.out, {
        "what": "RTT of a SYN to the protected port (queued, rejected, answered by the kernel: no socket) "
                "and to an unused port (answered by the kernel directly), reset mode, namespaces; "
                "tcpdump nanosecond timestamps on the attacker's interface",
        "results": {"protected_22": summary(rtts[22]), "unused_23": summary(rtts[23]),
                    "difference_p50_us": round((statistics.median(rtts[22]) - statistics.median(rtts[23]))
                                               * 1000, 1),
                    **ks_test(rtts[22], rtts[23]),
                    "probes_per_port_to_tell_apart": probes_to_tell_apart(rtts[22], rtts[23])},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
