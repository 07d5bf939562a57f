# Why: measures ssh login time (`ssh ... true`) directly and through stealth-connect, alternating, in the
# same namespaces and the same run, so the two numbers are comparable. Results go to
# benchmarks/login.json together with the command line that produced them.
import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from scripts.lib.stealthlab import stealth_lab, write_results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/login.json"))
    args = parser.parse_args()
    times: dict[str, list[float]] = {"direct": [], "stealth": []}
    with stealth_lab(server_id="bench", clients=("alice",)) as sl:
        argvs = {
            "direct": sl.ssh_argv("alice", sl.srv.ip4, command="true", knock=False, extra=["-p", "2222"]),
            "stealth": sl.ssh_argv("alice", sl.srv.ip4, command="true"),
        }
        for _ in range(args.runs):
            for mode, argv in argvs.items():
                start = time.perf_counter()
                result = sl.cli.run(argv, check=False, timeout=60, stdin=subprocess.DEVNULL)
                elapsed = time.perf_counter() - start
                if result.returncode != 0:
                    print(f"{mode} login failed: {result.stderr.strip()}", file=sys.stderr)
                    return 1
                times[mode].append(elapsed * 1000)
    summary = {
        mode: {"runs": len(v), "median_ms": round(statistics.median(v), 2),
               "p90_ms": round(sorted(v)[int(0.9 * len(v)) - 1], 2), "max_ms": round(max(v), 2)}
        for mode, v in times.items()
    }
    ratio = summary["stealth"]["median_ms"] / summary["direct"]["median_ms"]
    write_results(args.out, {
        "machine": {"kernel": platform.release(), "python": platform.python_version(),
                    "cpus": __import__("os").cpu_count()},
        "what": "ssh -o ProxyCommand='stealth-connect %h %p' root@server true, against ssh -p 2222 "
                "(same sshd, unprotected port), alternating, client and server in network namespaces",
        "results": summary,
        "median_ratio": round(ratio, 3),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
