# Why: issue 4 §2. Knock-to-connected for stealth and the systems users would otherwise pick, in one
# run, alternating (the worker in the client namespace does the timing), and full ssh logins (`true`)
# direct and through stealth-connect, alternating, as scripts/measure-login does.
import json
import secrets
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import note_command, summary_ms
from benchmarks.lab import (
    KNOCK_SEQUENCE,
    PORT_FWKNOP,
    PORT_KNOCKD,
    PORT_PLAIN,
    PORT_STEALTH,
    BenchLab,
    env_for_tools,
)
from scripts.lib.stealthlab import tool


def knock_to_connected(bl: BenchLab, samples: int) -> dict[str, Any]:
    cfg = {
        "srv": bl.srv.ip4, "client_dir": str(bl.sl.client_dirs["alice"]), "samples": samples,
        "port_plain": PORT_PLAIN, "port_stealth": PORT_STEALTH, "port_fwknop": PORT_FWKNOP,
        "port_knockd": PORT_KNOCKD, "sequence": list(KNOCK_SEQUENCE), "fwknop_rc": str(bl.fwknop_rc),
        "stealth_connect": tool("stealth-connect"), "flush_prefix": ["ip", "netns", "exec", bl.srv.ns],
    }
    argv = bl.cli.argv([sys.executable, "-m", "benchmarks.latency_worker", json.dumps(cfg)])
    note_command([f"ip netns exec CLI python -m benchmarks.latency_worker '{{...samples: {samples}}}'"])
    r = subprocess.run(argv, capture_output=True, text=True, check=False, env=env_for_tools(), timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"latency worker failed: {r.stderr[-2000:]}")
    doc = json.loads(r.stdout)
    out: dict[str, Any] = {}
    for name, values in doc["times"].items():
        out[name] = {**summary_ms(values), "failed": len(doc["errors"][name]),
                     "errors": doc["errors"][name][:3]}
    out["durable_writes"] = durable_writes(bl)
    base = out["plain_connect"].get("p50_ms", 0)
    out["stealth_in_process_added_p50_ms"] = round(out["stealth_connect_in_process"]["p50_ms"] - base, 3)
    phases = {name: statistics.median(v) * 1000 for name, v in doc["in_process_phases"].items() if v}
    if phases:
        phases["rest"] = out["stealth_connect_in_process"]["p50_ms"] - sum(phases.values())
        out["stealth_in_process_phases_p50_ms"] = {k: round(v, 3) for k, v in phases.items()}
    out["what"] = {
        "plain_connect": f"socket.create_connection to an unprotected port ({PORT_PLAIN})",
        "stealth_connect_in_process": "stealth_connect.connect() in the worker process (counter taken "
                                      "and saved durably, token derived, kernel SYN, SYN-ACK); the "
                                      "profile and key id are cached across calls while the file is "
                                      "unchanged",
        "stealth_connect_process": "spawn `stealth-connect --fdpass`, until the connected fd arrives "
                                   "(Python start-up included)",
        "fwknop": f"`fwknop -A tcp/{PORT_FWKNOP}` (HMAC + Rijndael SPA over UDP; fwknopd defaults, "
                  "PCAP_LOOP_SLEEP 100 ms), then connect retried every 5 ms until the rule is in",
        "knockd": f"`knock {' '.join(map(str, KNOCK_SEQUENCE))}` (TCP SYNs), then connect retried every 5 ms",
    }
    return out


def durable_writes(bl: BenchLab, n: int = 20) -> dict[str, float]:
    """What the counters' durability costs on this filesystem, per knock: the client's take_counter (one
    slot of its fixed-size counter file, pwrite + fdatasync) and record_success (diagnostics, no sync),
    medians of 10*n calls after the file exists; and the server's commit of one knock before its verdict
    (one journal record appended, one fdatasync), also the median of 10*n."""
    from stealth_connect.profiles import record_success, take_counter

    from stealth.server_state import ServerState

    d = bl.tmp / "fsync-probe"
    d.mkdir()
    path = d / "counter.ctr"
    out: dict[str, float] = {}
    take_counter(path)  # creates the file (once per key: temp, fsync, rename, directory fsync)
    taken: list[int] = []
    took: list[float] = []
    for _ in range(10 * n):
        t = time.perf_counter()
        taken.append(take_counter(path))
        took.append(time.perf_counter() - t)
    out["client_take_counter_ms"] = round(statistics.median(took) * 1000, 3)
    recorded: list[float] = []
    for c in taken:
        t = time.perf_counter()
        record_success(path, c)
        recorded.append(time.perf_counter() - t)
    out["client_record_success_ms"] = round(statistics.median(recorded) * 1000, 3)
    log = ServerState(d).counter_log()
    log.open()
    ident = secrets.token_bytes(8)
    appended = []
    for c in range(10 * n):
        t = time.perf_counter()
        log.append([(ident, c + 1)])
        appended.append(time.perf_counter() - t)
    log.close()
    out["server_commit_one_ms"] = round(statistics.median(appended) * 1000, 3)
    return out


def logins(bl: BenchLab, runs: int) -> dict[str, Any]:
    argvs = {
        "direct": bl.sl.ssh_argv("alice", bl.srv.ip4, command="true", knock=False, extra=["-p", "2222"]),
        "stealth": bl.sl.ssh_argv("alice", bl.srv.ip4, command="true"),
    }
    for argv in argvs.values():
        note_command(["ip netns exec CLI", *argv])
    times: dict[str, list[float]] = {"direct": [], "stealth": []}
    failed = {"direct": 0, "stealth": 0}
    for _ in range(runs):
        for mode, argv in argvs.items():
            t = time.perf_counter()
            r = bl.cli.run(argv, check=False, timeout=60, stdin=subprocess.DEVNULL)
            if r.returncode == 0:
                times[mode].append(time.perf_counter() - t)
            else:
                failed[mode] += 1
    out: dict[str, Any] = {m: {**summary_ms(v), "failed": failed[m]} for m, v in times.items()}
    out["p50_ratio"] = round(out["stealth"]["p50_ms"] / out["direct"]["p50_ms"], 3)
    return out
