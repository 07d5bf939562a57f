# Why: the entry of scripts/bench. Builds the C tools, runs every section of issue 4 (scale in-process;
# knock-to-connected, logins, verification rate and logins under attack in one set of namespaces) and
# the sealed-port figures of issue 11 and the client figures of issue 10 (namespaces of their own each),
# and writes benchmarks/results.json (raw figures, machine, commands) and benchmarks/RESULTS.md (each
# figure beside its anchor). A section that fails is recorded as an error; the others still run.
import argparse
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import attack, client, latency, report, scale, seal, verify_rate
from benchmarks.common import COMMANDS, ROOT, background_busy, build_c, dump, machine
from benchmarks.lab import check_no_route_out, setup
from scripts.lib.netlab import Lab


def section(results: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    results.setdefault("background_cpu_busy_pct_before", {})[name] = background_busy()
    t = time.monotonic()
    print(f"bench: == {name}", file=sys.stderr, flush=True)
    try:
        results[name] = fn()
    except Exception as e:  # noqa: BLE001 -- record it and go on with the other sections
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    results.setdefault("section_seconds", {})[name] = round(time.monotonic() - t, 1)
    return results[name]


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench")
    parser.add_argument("--quick", action="store_true", help="smaller samples, about 4 minutes")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--only", help="comma-separated sections: scale,latency,logins,verify,attack,sealed,"
                                       "client")
    args = parser.parse_args()
    q = args.quick
    only = set(args.only.split(",")) if args.only else {"scale", "latency", "logins", "verify", "attack",
                                                               "sealed", "client"}
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": " ".join(["scripts/bench", *sys.argv[1:]]), "mode": "quick" if q else "full",
        "machine": machine(), "load_before": Path("/proc/loadavg").read_text().split()[:3],
    }
    build_c()
    if "scale" in only:
        with tempfile.TemporaryDirectory(prefix="stealth-bench-scale-", dir="/var/tmp") as d:
            sizes = [1000, 100_000, 1_000_000]  # quick mode skips only the 1M reload (~13 s)
            section(results, "scale", lambda: scale.run(
                Path(d), sizes, deadline_s=150, rss_limit_mib=4096, profile_n=5000 if q else 20_000,
                reload_below=1_000_000 if q else 10**9))
    if only & {"latency", "logins", "verify", "attack"}:
        with Lab() as lab:
            bl = setup(lab, 1000)
            check_no_route_out(bl)
            if "latency" in only:
                section(results, "knock_to_connected",
                        lambda: latency.knock_to_connected(bl, 30 if q else 200))
            if "logins" in only:
                section(results, "ssh_login", lambda: latency.logins(bl, 10 if q else 100))
            if "verify" in only:
                section(results, "verification_rate", lambda: verify_rate.run(bl, q))
            if "attack" in only:
                sat = results.get("verification_rate", {}).get("junk", {}).get("processed_pps_at_saturation")
                if sat:
                    section(results, "under_attack", lambda: attack.run(bl, float(sat), 6 if q else 200,
                                                                          15 if q else 150))
                else:
                    results["under_attack"] = {"error": "no junk saturation rate measured (run verify too)"}
            bl.stop_server()
    if "sealed" in only:  # namespaces of its own: a server that seals port 22
        section(results, "sealed", lambda: seal.run(q))
    if "client" in only:  # namespaces of its own, and a non-editable client install (issue 10)
        section(results, "client", lambda: client.run(q))
    results["commands"] = COMMANDS
    results["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    results["total_seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(exist_ok=True)
    dump(args.out / "results.json", results)
    (args.out / "RESULTS.md").write_text(report.render(results))
    print(f"bench: wrote {args.out / 'results.json'} and {args.out / 'RESULTS.md'} "
          f"in {results['total_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
