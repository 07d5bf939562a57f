# Why: issue 4 §1. How many SYNs per second the real `stealth server run` verifies, read from the
# kernel's own NFQUEUE counters in the server's namespace (never from the sender), for all-valid knocks,
# 1% valid and pure junk, with the machine's ceilings beside it in the same run: a minimal C consumer
# (per-packet and batched verdicts) and a kernel-only DROP rule. Each probe reports the sender's own rate,
# whether any SYN was lost, the processed rate, and busy % per core.
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BUILD,
    QueueCounters,
    cpu_busy,
    cpu_times,
    note_command,
    proc_cpu_seconds,
    queue_counters,
)
from benchmarks.enroll import write_tokens
from benchmarks.lab import QUEUE, SERVER_ID, BenchLab

MIX_EVERY = 100  # 1% valid


@dataclass
class Probe:
    offered_pps: float  # what the sender was asked for (0 = as fast as it can)
    sent: int
    sender_pps: float
    seconds: float
    entered: int  # reached the queue: ids handed out + dropped because the queue was full
    queue_dropped: int
    backlog: int  # still waiting for a verdict when the sender stopped
    processed: int  # verdicts given during the send window
    processed_pps: float
    cpu_busy: list[float]
    consumer_cpu_pct: float
    valid_sent: int
    counts: dict[str, int]

    @property
    def lossless(self) -> bool:
        """Nothing dropped, everything reached the queue, and the consumer kept up (a backlog of more than
        5% of the probe when the sender stopped means it only looked lossless thanks to the queue)."""
        return self.queue_dropped == 0 and self.entered >= self.sent and self.backlog <= 0.05 * self.sent

    def doc(self) -> dict[str, Any]:
        return {
            "offered_pps": round(self.offered_pps), "sent": self.sent, "sender_pps": round(self.sender_pps),
            "seconds": round(self.seconds, 3), "entered_queue": self.entered,
            "queue_dropped": self.queue_dropped, "backlog_at_end": self.backlog, "processed": self.processed,
            "processed_pps": round(self.processed_pps), "lossless": self.lossless,
            "cpu_busy_pct_per_core": self.cpu_busy, "consumer_cpu_pct": round(self.consumer_cpu_pct, 1),
            "valid_sent": self.valid_sent, "verdicts": self.counts,
        }


class Runner:
    def __init__(self, bl: BenchLab, seconds: float, tokens: Path) -> None:
        self.bl = bl
        self.seconds = seconds
        self.tokens = tokens
        self.offset = 0  # next unused token record: each valid knock is sent once
        self.consumer_pid = 0
        self.counts: Callable[[], dict[str, int]] = lambda: {}

    def probe(self, mode: str, rate: float, seconds: float | None = None) -> Probe:
        seconds = seconds or self.seconds
        ns = self.bl.srv.ns
        tokens = self.tokens if mode in ("valid", "mix") else None
        argv = self.bl.flood_argv(mode, rate, seconds, tokens, self.offset, MIX_EVERY)
        note_command(["ip netns exec ATK", *argv[4:]])
        self.drain()
        counts0 = self.counts()
        q0 = queue_counters(ns, QUEUE) or QueueCounters(QUEUE, 0, 0, 0, 0)
        c0, p0 = cpu_times(), proc_cpu_seconds(self.consumer_pid)
        r = subprocess.run(argv, capture_output=True, text=True, check=True)
        q1 = queue_counters(ns, QUEUE) or q0
        c1, p1 = cpu_times(), proc_cpu_seconds(self.consumer_pid)
        out = json.loads(r.stdout)
        self.offset = int(out["next_offset"]) if tokens else self.offset
        self.drain()
        counts1 = self.counts()
        counts = {k: v - counts0.get(k, 0) for k, v in counts1.items() if v - counts0.get(k, 0)}
        # ids go only to packets the queue took; a full queue drops before giving an id
        ids = q1.id_sequence - q0.id_sequence
        full = q1.dropped - q0.dropped
        processed = ids - (q1.user_dropped - q0.user_dropped) - (q1.waiting - q0.waiting)
        secs = float(out["seconds"])
        return Probe(rate, int(out["sent"]), float(out["rate_pps"]), secs, ids + full,
                     full + q1.user_dropped - q0.user_dropped, q1.waiting, processed, processed / secs,
                     cpu_busy(c0, c1), 100 * (p1 - p0) / secs, int(out["valid_sent"]), counts)

    def drain(self, limit_s: float = 60) -> None:
        """Wait until the queue is empty (a probe must not start on the last one's backlog)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            q = queue_counters(self.bl.srv.ns, QUEUE)
            if q is None or q.waiting == 0:
                return
            time.sleep(0.1)

    def search(self, mode: str, sat_rate: float, steps: int) -> dict[str, Any]:
        """Saturate (offer `sat_rate`, 0 = the sender's top speed), then offer 90%, 75%, 60%, ... of the
        processed rate until a probe is lossless, and bisect once between it and the last lossy rate."""
        sat = self.probe(mode, sat_rate)
        probes = [sat]
        good, bad = 0.0, 0.0
        if sat.lossless:
            good = sat.sender_pps
        else:
            for f in (0.9, 0.75, 0.6, 0.45, 0.3, 0.15, 0.05)[:steps]:
                rate = max(50.0, f * sat.processed_pps)
                p = self.probe(mode, rate)
                probes.append(p)
                if p.lossless and p.sender_pps >= 0.97 * rate:
                    good = rate
                    break
                bad = rate
            if good and bad:
                mid = (good + bad) / 2
                p = self.probe(mode, mid)
                probes.append(p)
                if p.lossless and p.sender_pps >= 0.97 * mid:
                    good = mid
        return {
            "highest_lossless_pps": round(good), "saturation": sat.doc(),
            "processed_pps_at_saturation": round(sat.processed_pps),
            "sender_pps_at_saturation": round(sat.sender_pps), "probes": [p.doc() for p in probes],
        }


def py_spy(pid: int, seconds: float, out: Path) -> dict[str, Any]:
    """Sample the server while it is flooded; return the top functions by own time and a few by total."""
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        return {"skipped": "py-spy not installed in the venv"}
    argv = [str(exe), "record", "-p", str(pid), "-d", f"{seconds:g}", "-r", "250", "--nonblocking",
            "-f", "raw", "-o", str(out)]
    note_command(argv)
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0 or not out.exists():
        return {"error": r.stderr.strip()[-300:]}
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            total[f] = total.get(f, 0) + count

    def top(d: dict[str, int], k: int) -> list[tuple[str, float]]:
        return [(f, round(100 * c / samples, 1)) for f, c in sorted(d.items(), key=lambda x: -x[1])[:k]]

    return {"samples": samples, "top_own_pct": top(own, 12), "top_total_pct": top(total, 20)}


def kernel_drop(bl: BenchLab, seconds: float) -> dict[str, Any]:
    srv = bl.srv
    rule = ["-p", "tcp", "--dport", "22", "--syn", "-j", "DROP"]
    srv.run(["iptables", "-t", "mangle", "-I", "INPUT", "1", *rule])
    note_command(["ip netns exec SRV iptables -t mangle -I INPUT 1", *rule])
    try:
        c0 = cpu_times()
        argv = bl.flood_argv("junk", 0, seconds)
        out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
        c1 = cpu_times()
        listing = srv.run(["iptables", "-t", "mangle", "-L", "INPUT", "-v", "-x", "-n"]).stdout.splitlines()
        pkts = int(listing[2].split()[0])
    finally:
        srv.run(["iptables", "-t", "mangle", "-D", "INPUT", *rule])
    return {"sender_pps": round(out["rate_pps"]), "dropped_by_rule": pkts,
            "dropped_pps": round(pkts / out["seconds"]), "cpu_busy_pct_per_core": cpu_busy(c0, c1)}


def c_consumer(bl: BenchLab, runner: Runner, mode: str) -> dict[str, Any]:
    srv = bl.srv
    rule = ["-p", "tcp", "--dport", "22", "--syn", "-j", "NFQUEUE", "--queue-num", str(QUEUE)]
    srv.run(["iptables", "-t", "mangle", "-I", "INPUT", "1", *rule])
    argv = ["taskset", "-c", "1", str(BUILD / "nfqconsumer"), str(QUEUE), mode]
    note_command(["ip netns exec SRV", *argv])
    proc = srv.popen(argv)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"nfqconsumer did not start: {proc.stderr.read() if proc.stderr else ''}")
        runner.consumer_pid = proc.pid
        res = runner.search("junk", 0, 2)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        srv.run(["iptables", "-t", "mangle", "-D", "INPUT", *rule])
    return res


def run(bl: BenchLab, quick: bool) -> dict[str, Any]:
    seconds = 1.0 if quick else 3.0
    tokens = bl.tmp / "tokens.bin"
    t = time.perf_counter()
    n_tokens = write_tokens(tokens, bl.bench_clients, SERVER_ID, 22, range(1, 301))
    out: dict[str, Any] = {
        "clients": len(bl.bench_clients) + 1, "window": 16, "probe_seconds": seconds,
        "token_records": n_tokens, "token_precompute_seconds": round(time.perf_counter() - t, 2),
        "server_init_args": bl.init_args,
        "placement": "sender (and the softirq work it drives: bridge, netfilter, queueing) pinned to core 0; "
                     "the consumer pinned to core 1",
    }
    runner = Runner(bl, seconds, tokens)
    # machine ceilings first, with the stealth server stopped (it owns the queue)
    bl.stop_server()
    print("bench: verify: kernel DROP and C consumers", file=sys.stderr, flush=True)
    out["kernel_drop"] = kernel_drop(bl, seconds)
    out["c_consumer_per_packet"] = c_consumer(bl, runner, "per-packet")
    out["c_consumer_batch"] = c_consumer(bl, runner, "batch")
    bl.start_server()
    runner.consumer_pid = bl.server_pid()
    runner.counts = bl.accepted_counts
    steps = 3 if quick else 7
    print("bench: verify: stealth server, junk", file=sys.stderr, flush=True)
    out["junk"] = runner.search("junk", 0, steps)
    junk_sat = max(1000.0, out["junk"]["processed_pps_at_saturation"])
    print("bench: verify: stealth server, 1% valid", file=sys.stderr, flush=True)
    out["one_percent_valid"] = runner.search("mix", junk_sat, steps)
    print("bench: verify: stealth server, all valid", file=sys.stderr, flush=True)
    # offered at most ~5x what the server verifies, so a client's processed knocks stay within its window
    first = runner.probe("valid", 2000)
    # offer 1.5x the 20k/s target (or 4x what the first probe verified, if more), so the target is tested
    out["all_valid"] = runner.search("valid", max(4 * max(200.0, first.processed_pps), 30_000), steps)
    out["all_valid"]["probes"].insert(0, first.doc())
    for name, mode in (("junk", "junk"), ("all_valid", "valid")):
        if name == "junk" or not quick:
            runner.drain()
            prof_rate = 0 if mode == "junk" else 4 * max(1, out[name]["highest_lossless_pps"])
            prof_argv = bl.flood_argv(mode, prof_rate,
                                      seconds + 3, bl.tmp / "tokens.bin" if mode != "junk" else None,
                                      runner.offset)
            flood = subprocess.Popen(prof_argv, stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            out[name]["py_spy"] = py_spy(bl.server_pid(), seconds + 1, bl.tmp / f"pyspy-{name}.txt")
            fout, _ = flood.communicate(timeout=60)
            if mode != "junk":
                runner.offset = int(json.loads(fout)["next_offset"])
    # two worker processes (--workers 2: NFQUEUE --queue-balance 50:51), unpinned; the sender stays on
    # core 0, so on a 2-core machine the workers share cores with it
    print("bench: verify: stealth server, junk, 2 workers", file=sys.stderr, flush=True)
    bl.stop_server()
    bl.start_server(workers=2)
    runner.consumer_pid = bl.server_pid()
    out["junk_2_workers"] = runner.search("junk", 0, steps)
    one = max(1, out["junk"]["processed_pps_at_saturation"])
    out["junk_2_workers"]["scaling_vs_1_worker"] = round(
        out["junk_2_workers"]["processed_pps_at_saturation"] / one, 2)
    bl.stop_server()
    bl.start_server()
    out["tokens_used"] = runner.offset
    return out
