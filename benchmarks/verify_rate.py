# Why: issue 4 §1. How many SYNs per second the real `stealth server run` verifies, read from the
# kernel's own NFQUEUE counters in the server's namespace (never from the sender), for all-valid knocks,
# 1% valid and pure junk, with the machine's ceilings beside it in the same run: a minimal C consumer
# (per-packet and batched verdicts) and a kernel-only DROP rule. Each probe reports the sender's own rate,
# whether any SYN was lost, the processed rate, and busy % per core.
# On two cores a flood measures the sender's core (sender, veth, netfilter, queueing) as much as the
# consumer, so each consumer is also timed alone: stopped (SIGSTOP) while its queue is pre-filled with
# junk, then resumed and timed from the queue's kernel counters until the queue is empty.
import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netlab import run as run_argv

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
from stealth.constants import NFQUEUE_MAX_LEN, NFQUEUE_SOCKET_BYTES_PER_PACKET

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


NETLINK_NETFILTER = 12
SYS_PIDFD_GETFD = 438  # x86_64 and aarch64
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
DRAIN_SOCKET_BYTES_PER_PACKET = 2048  # well above a 128-byte copy's netlink message, so none is lost


def consumer_socket(pid: int) -> socket.socket:
    """The consumer's own NFQUEUE netlink socket, duplicated into this process (pidfd_getfd, as root):
    a message sent on it comes from the queue's owner, so the kernel lets it configure that queue."""
    inodes = set()
    for line in Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1]) == NETLINK_NETFILTER:
            inodes.add(int(f[-1]))
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and int(link[8:-1]) in inodes:
            pidfd = os.pidfd_open(pid)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                new = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0))
                if new < 0:
                    raise OSError(ctypes.get_errno(), "pidfd_getfd")
            finally:
                os.close(pidfd)
            return socket.socket(fileno=new)
    raise RuntimeError(f"no NFQUEUE netlink socket in process {pid}")


def set_queue_len(pid: int, max_len: int, rcvbuf: int) -> None:
    """Set the queue's max_len (NFQNL_MSG_CONFIG with NFQA_CFG_QUEUE_MAXLEN) and the consumer's socket
    buffer, from outside the consumer: a benchmark-only change, undone after the drain probes."""
    attr = struct.pack("=HH", 8, 3) + struct.pack("!I", max_len)  # NFQA_CFG_QUEUE_MAXLEN
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, QUEUE) + attr
    msg = struct.pack("=IHHII", 16 + len(body), 3 << 8 | 2, 1, 0, 0) + body  # QUEUE/CONFIG, REQUEST
    with consumer_socket(pid) as s:
        s.send(msg)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)


def _waiting(path: str) -> int:
    with open(path) as f:
        for line in f:
            v = line.split()
            if int(v[0]) == QUEUE:
                return int(v[2])
    return 0


def one_drain(bl: BenchLab, pid: int, n: int) -> dict[str, Any]:
    """Stop the consumer, queue about `n` junk SYNs at the sender's top speed, resume it and time how
    fast the kernel's waiting count falls to 0 (this process samples it on core 0, the consumer runs on
    core 1, the sender has finished)."""
    ns, path = bl.srv.ns, f"/proc/{pid}/net/netfilter/nfnetlink_queue"
    q0 = queue_counters(ns, QUEUE) or QueueCounters(QUEUE, 0, 0, 0, 0)
    affinity = os.sched_getaffinity(0)
    os.kill(pid, signal.SIGSTOP)
    try:
        argv = bl.flood_argv("junk", 0, n / 170_000)
        note_command(["ip netns exec ATK", *argv[4:]])
        sent = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
        w, prev = _waiting(path), -1
        while w != prev:  # until the last SYNs are through the softirq
            time.sleep(0.05)
            w, prev = _waiting(path), w
        qf = queue_counters(ns, QUEUE) or q0
        os.sched_setaffinity(0, {0})
        cpu0, p0 = cpu_times(), proc_cpu_seconds(pid)
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGCONT)
        samples = [(0.0, w)]
        while w and samples[-1][0] < 60:
            time.sleep(0.0002)
            w = _waiting(path)
            samples.append((time.perf_counter() - t0, w))
        cpu1, p1 = cpu_times(), proc_cpu_seconds(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
        os.sched_setaffinity(0, affinity)
    queued = samples[0][1]
    total = samples[-1][0]
    t90 = next(t for t, x in samples if x <= 0.9 * queued)
    t10 = next(t for t, x in samples if x <= 0.1 * queued)
    return {
        "sent": int(sent["sent"]), "queued": queued, "lost_while_filling": (qf.dropped - q0.dropped)
        + (qf.user_dropped - q0.user_dropped), "left_waiting": w, "drain_seconds": round(total, 4),
        "drain_pps": round(queued / total), "steady_pps": round(0.8 * queued / max(1e-9, t10 - t90)),
        "consumer_cpu_pct": round(100 * (p1 - p0) / total, 1), "cpu_busy_pct_per_core": cpu_busy(cpu0, cpu1),
        "samples": len(samples),
    }


def prefill_drain(bl: BenchLab, runner: Runner, pid: int, n: int, repeats: int) -> dict[str, Any]:
    """`repeats` drains of a pre-filled queue of about `n` junk SYNs; the median steady rate counts."""
    runner.drain()
    set_queue_len(pid, 2 * n, 2 * n * DRAIN_SOCKET_BYTES_PER_PACKET)
    try:
        runs = [one_drain(bl, pid, n) for _ in range(repeats)]
    finally:
        set_queue_len(pid, NFQUEUE_MAX_LEN, NFQUEUE_MAX_LEN * NFQUEUE_SOCKET_BYTES_PER_PACKET)
    steady = sorted(r["steady_pps"] for r in runs)
    whole = sorted(r["drain_pps"] for r in runs)
    return {"steady_pps": steady[len(steady) // 2], "drain_pps": whole[len(whole) // 2],
            "consumer_cpu_pct": sorted(r["consumer_cpu_pct"] for r in runs)[len(runs) // 2],
            "queued": runs[0]["queued"], "runs": runs}


PER_PACKET_SERVER = ("import sys, stealth.nfqueue as q; q.BATCH_DROPS = False; from stealth.cli import main; "
                     "sys.argv[0] = 'stealth'; main()")


def start_per_packet_server(bl: BenchLab) -> None:
    """`stealth server run` exactly as deployed, except that each drop is its own verdict message (the
    module switch stealth.nfqueue.BATCH_DROPS off): what batching gains, measured the same way."""
    sl = bl.sl
    sl.server_log_path = bl.tmp / "server-per-packet.log"
    argv = [sys.executable, "-c", PER_PACKET_SERVER, "server", "run", "--state-dir", str(sl.state_dir)]
    note_command(["ip netns exec SRV", *argv])
    with open(sl.server_log_path, "w") as log:
        proc = bl.srv.popen(argv, stderr=log)
    assert proc.stdout is not None
    if "ready" not in proc.stdout.readline():
        proc.wait(timeout=5)
        raise RuntimeError(f"per-packet server did not start: {sl.server_log_path.read_text()}")
    sl.server_proc = proc
    run_argv(["taskset", "-a", "-pc", "1", str(proc.pid)])


def c_consumer(bl: BenchLab, runner: Runner, mode: str,
               drain: tuple[int, int] | None = None) -> dict[str, Any]:
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
        if drain is not None:
            res["prefill_drain"] = prefill_drain(bl, runner, proc.pid, *drain)
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
    # SYNs pre-filled, drains per consumer; this kernel kept at most 65,536 packets waiting in one queue
    # whatever max_len asked for (the rest counted as queue drops), so the fill stays below that
    drain = (55_000, 3) if quick else (55_000, 7)
    out["prefill_drain"] = {
        "syns": drain[0], "repeats": drain[1],
        "how": "consumer stopped (SIGSTOP), about this many junk SYNs queued (queue max_len and the "
               "consumer's socket buffer raised for the probe through its own netlink socket), consumer "
               "resumed alone on core 1; rate = SYNs drained / time, from the kernel's waiting count "
               "sampled every ~0.2 ms on core 0; steady = 90% -> 10% of the queue; median of the repeats",
    }
    # machine ceilings first, with the stealth server stopped (it owns the queue)
    bl.stop_server()
    print("bench: verify: kernel DROP and C consumers", file=sys.stderr, flush=True)
    out["kernel_drop"] = kernel_drop(bl, seconds)
    out["c_consumer_per_packet"] = c_consumer(bl, runner, "per-packet", drain)
    out["c_consumer_batch"] = c_consumer(bl, runner, "batch", drain)
    print("bench: verify: stealth server with per-packet drops, drain", file=sys.stderr, flush=True)
    start_per_packet_server(bl)
    runner.consumer_pid = bl.server_pid()
    out["stealth_per_packet_drain"] = prefill_drain(bl, runner, bl.server_pid(), *drain)
    bl.stop_server()
    bl.start_server()
    runner.consumer_pid = bl.server_pid()
    runner.counts = bl.accepted_counts
    steps = 3 if quick else 7
    print("bench: verify: stealth server, junk", file=sys.stderr, flush=True)
    out["junk"] = runner.search("junk", 0, steps)
    print("bench: verify: stealth server, drain", file=sys.stderr, flush=True)
    accepted0 = bl.accepted_counts().get("accepted_syns", 0)
    out["junk"]["prefill_drain"] = prefill_drain(bl, runner, bl.server_pid(), *drain)
    out["junk"]["prefill_drain"]["accepted"] = bl.accepted_counts().get("accepted_syns", 0) - accepted0
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
