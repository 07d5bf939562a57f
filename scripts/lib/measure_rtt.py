# Why: in reset mode an invalid SYN to the protected port is answered after a trip through the userspace
# queue, while an unused neighbour's RST comes straight from the kernel. This measures both RTT
# distributions with hping3 from an attacker namespace (interleaved, N probes each) so the gap is a
# published number, and writes it with the command to benchmarks/rtt.json.
import argparse
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from stealthlab import stealth_lab, write_results

RTT = re.compile(r"sport=(\d+) .*rtt=([0-9.]+) ms")


def probe(sl: Any, port: int, count: int) -> list[float]:
    out = sl.atk.run(["hping3", "-S", "-p", str(port), "-c", str(count), "-i", "u3000", sl.srv.ip4],
                     check=False, timeout=600).stdout
    return [float(m.group(2)) for m in RTT.finditer(out)]


def summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"n": len(s), "p10_ms": s[len(s) // 10], "p50_ms": statistics.median(s),
            "p90_ms": s[9 * len(s) // 10], "p99_ms": s[99 * len(s) // 100], "mean_ms": statistics.fmean(s)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/rtt.json"))
    args = parser.parse_args()
    per_round = args.probes // args.rounds
    rtts: dict[str, list[float]] = {"protected_22": [], "unused_23": []}
    reset = ("--unauth", "reset", "--syn-rate", "100000")
    with stealth_lab(server_id="rtt", clients=(), init_args=reset) as sl:
        for _ in range(args.rounds):  # interleave the two ports against drift
            rtts["protected_22"] += probe(sl, 22, per_round)
            rtts["unused_23"] += probe(sl, 23, per_round)
    write_results(args.out, {
        "what": "hping3 -S RTT to the protected port (invalid SYN -> NFQUEUE -> REJECT tcp-reset) and to an "
                "unused port (SYN -> NFQUEUE -> kernel RST: neighbours take the same trip), reset mode, "
                "namespaces; hping3 reports RTT in 0.1 ms steps",
        "results": {k: summary(v) for k, v in rtts.items()},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
