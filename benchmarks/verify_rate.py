# Why: issue 4 §1. How many SYNs per second the real `stealth server run` verifies, read from the
# kernel's own NFQUEUE counters in the server's namespace (never from the sender), for all-valid knocks,
# 1% valid and pure junk, with the machine's ceilings beside it in the same run: a minimal C consumer
# (per-packet and batched verdicts) and a kernel-only DROP rule. Each probe reports the sender's own rate,
# whether any SYN was lost, the processed rate, and busy % per core.
# On two cores a flood measures the sender's core (sender, veth, netfilter, queueing) as much as the
# consumer, so each consumer is also timed alone: stopped (SIGSTOP) while its queue is pre-filled with
# junk, then resumed and timed from the queue's kernel counters until the queue is empty. The
# --workers 2 server is timed the same way with both queues pre-filled and both workers resumed at once,
# one per core: the scaling target is judged on that drain against the single process's.
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

from benchmarks.common import (
    BUILD,
    QueueCounters,
    background_busy,
    cpu_busy,
    cpu_times,
    note_command,
    proc_cpu_seconds,
    queue_counters,
)
from benchmarks.enroll import write_tokens
from benchmarks.lab import QUEUE, SERVER_ID, BenchLab
from scripts.lib.netlab import run as run_argv
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
        self.cpu_pids: list[int] = []  # whose CPU counts as the consumer's, if not consumer_pid's (workers)
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
        c0, p0 = cpu_times(), self.consumer_cpu()
        r = subprocess.run(argv, capture_output=True, text=True, check=True)
        q1 = queue_counters(ns, QUEUE) or q0
        c1, p1 = cpu_times(), self.consumer_cpu()
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

    def consumer_cpu(self) -> float:
        return sum(proc_cpu_seconds(p) for p in self.cpu_pids or [self.consumer_pid])

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
# the reader shares core 0 with worker 0: polled every 0.2 ms (as for a lone consumer) it took ~16% of
# that core, every 2 ms ~5%; the 90% and 10% crossings are interpolated between samples
WORKERS_DRAIN_POLL_S = 0.005


def _netlink_inodes(pid: int, portid: int | None = None) -> set[int]:
    """Inodes of the NETLINK_NETFILTER sockets in `pid`'s network namespace (only the one bound to
    `portid`, if given)."""
    out = set()
    for line in Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1]) == NETLINK_NETFILTER and (portid is None or int(f[2]) == portid):
            out.add(int(f[-1]))
    return out


def _queue_portid(pid: int, queue: int) -> int | None:
    """The netlink port id of the process bound to `queue` (peer_portid in nfnetlink_queue)."""
    for line in Path(f"/proc/{pid}/net/netfilter/nfnetlink_queue").read_text().splitlines():
        v = line.split()
        if int(v[0]) == queue:
            return int(v[1])
    return None


def consumer_socket(pids: list[int], queue: int = QUEUE) -> tuple[int, socket.socket]:
    """The NFQUEUE netlink socket bound to `queue`, found among the processes `pids` (the one whose
    port id the kernel lists for the queue), duplicated into this process (pidfd_getfd, as root): a
    message sent on it comes from the queue's owner, so the kernel lets it configure that queue.
    Returns (the owner's pid, the socket)."""
    inodes = _netlink_inodes(pids[0], _queue_portid(pids[0], queue))
    for pid in pids:
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
                return pid, socket.socket(fileno=new)
    raise RuntimeError(f"no process of {pids} holds the netlink socket of NFQUEUE {queue}")


def set_queue_len(pids: list[int], queue: int, max_len: int, rcvbuf: int) -> int:
    """Set the queue's max_len (NFQNL_MSG_CONFIG with NFQA_CFG_QUEUE_MAXLEN) and its consumer's socket
    buffer, from outside the consumer: a benchmark-only change, undone after the drain probes. Returns
    the pid of the process that owns the queue."""
    attr = struct.pack("=HH", 8, 3) + struct.pack("!I", max_len)  # NFQA_CFG_QUEUE_MAXLEN
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attr
    msg = struct.pack("=IHHII", 16 + len(body), 3 << 8 | 2, 1, 0, 0) + body  # QUEUE/CONFIG, REQUEST
    owner, sock = consumer_socket(pids, queue)
    with sock as s:
        s.send(msg)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    return owner


def _waiting(path: str, queues: list[int]) -> list[int]:
    """Packets waiting in each of `queues` (0 for a queue nobody is bound to)."""
    found = {}
    with open(path) as f:
        for line in f:
            v = line.split()
            found[int(v[0])] = int(v[2])
    return [found.get(q, 0) for q in queues]


def _crossing(samples: list[tuple[float, int]], level: float) -> float:
    """When the waiting count first fell to `level`, interpolated between the two samples around it (so
    a coarser poll does not round the time up to the next sample)."""
    for i, (t, x) in enumerate(samples):
        if x <= level:
            if i == 0:
                return t
            t_prev, x_prev = samples[i - 1]
            return t_prev + (t - t_prev) * (x_prev - level) / max(1, x_prev - x)
    return samples[-1][0]


def _resume(pids: list[int]) -> None:
    """SIGCONT all `pids` in one kill(2) when they are one process group without this process (the
    server and its workers; a lone consumer), so none starts ahead: with one signal each, the first
    worker woken on this process's core preempted it and the second started milliseconds later. A
    running member of the group (the workers' parent) ignores SIGCONT."""
    groups = {os.getpgid(pid) for pid in pids}
    if len(groups) == 1 and os.getpgrp() not in groups:
        os.killpg(groups.pop(), signal.SIGCONT)
    else:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _fill(bl: BenchLab, path: str, queues: list[int], n: int) -> tuple[Any, list[int]]:
    """Queue about `n` junk SYNs at the sender's top speed; the sender's report and the waiting count
    per queue once the last of them are through the softirq."""
    argv = bl.flood_argv("junk", 0, n / 170_000)
    note_command(["ip netns exec ATK", *argv[4:]])
    sent = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    w, prev = _waiting(path, queues), None
    while w != prev:  # until the last SYNs are through the softirq
        time.sleep(0.05)
        w, prev = _waiting(path, queues), w
    return sent, w


def one_drain(bl: BenchLab, pids: list[int], queues: list[int], n: int, poll_s: float) -> dict[str, Any]:
    """Stop the consumers `pids` (one per queue), queue about `n` junk SYNs (spread over `queues` by the
    kernel's flow hash) at the sender's top speed, resume them all at once and time how fast the
    kernel's summed waiting count falls to 0. This process samples it on core 0 every `poll_s` and its
    own CPU is reported; the sender has finished."""
    ns, path = bl.srv.ns, f"/proc/{pids[0]}/net/netfilter/nfnetlink_queue"
    q0 = queue_counters(ns, QUEUE) or QueueCounters(QUEUE, 0, 0, 0, 0)
    affinity = os.sched_getaffinity(0)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        sent, per_queue0 = _fill(bl, path, queues, n)
        w = per_queue0
        qf = queue_counters(ns, QUEUE) or q0
        os.sched_setaffinity(0, {0})
        cpu0, p0, h0 = cpu_times(), [proc_cpu_seconds(p) for p in pids], time.process_time()
        t0 = time.perf_counter()
        _resume(pids)
        samples = [(0.0, sum(w))]
        emptied: list[float | None] = [None] * len(queues)
        while sum(w) and samples[-1][0] < 60:
            time.sleep(poll_s)
            w = _waiting(path, queues)
            t = time.perf_counter() - t0
            samples.append((t, sum(w)))
            emptied = [e if e is not None or x else t for e, x in zip(emptied, w, strict=True)]
        cpu1, p1, h1 = cpu_times(), [proc_cpu_seconds(p) for p in pids], time.process_time()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        os.sched_setaffinity(0, affinity)
    queued = samples[0][1]
    total = samples[-1][0]
    t90, t10 = _crossing(samples, 0.9 * queued), _crossing(samples, 0.1 * queued)
    consumer_s = sum(b - a for a, b in zip(p0, p1, strict=True))
    busy = cpu_busy(cpu0, cpu1)
    harness_pct = 100 * (h1 - h0) / total
    out: dict[str, Any] = {
        "sent": int(sent["sent"]), "queued": queued, "lost_while_filling": (qf.dropped - q0.dropped)
        + (qf.user_dropped - q0.user_dropped), "left_waiting": sum(w), "drain_seconds": round(total, 4),
        "drain_pps": round(queued / total), "steady_pps": round(0.8 * queued / max(1e-9, t10 - t90)),
        "consumer_cpu_pct": round(100 * consumer_s / total, 1), "cpu_busy_pct_per_core": busy,
        "samples": len(samples), "harness_cpu_pct": round(harness_pct, 1),
        # the rest of the busy time: other processes (other sessions on a shared machine), kernel threads
        "other_cpu_pct": round(sum(busy) - 100 * consumer_s / total - harness_pct, 1),
        # what the consumers did per CPU second they got: a share of a core lost to other work lowers
        # the drain rate, not this
        "syns_per_consumer_cpu_second": round(queued / max(1e-9, consumer_s)),
    }
    if len(queues) > 1:
        out.update({
            "queued_per_queue": per_queue0,
            "emptied_seconds_per_queue": [None if e is None else round(e, 4) for e in emptied],
            "worker_cpu_pct": [round(100 * (b - a) / total, 1) for a, b in zip(p0, p1, strict=True)],
        })
    return out


def _median(runs: list[dict[str, Any]], key: str) -> Any:
    return sorted(r[key] for r in runs)[len(runs) // 2]


def prefill_drain(bl: BenchLab, runner: Runner, pids: list[int], n: int, repeats: int,
                  queues: tuple[int, ...] = (QUEUE,), poll_s: float = 0.0002) -> dict[str, Any]:
    """`repeats` drains of pre-filled queues (about `n` junk SYNs per queue); the median steady rate
    counts. `pids`: the consumer, or the processes among which each queue's owner is found."""
    runner.drain()
    owners = []
    try:
        for q in queues:
            owners.append(set_queue_len(pids, q, 2 * n, 2 * n * DRAIN_SOCKET_BYTES_PER_PACKET))
        runs = [one_drain(bl, owners, list(queues), n * len(queues), poll_s) for _ in range(repeats)]
    finally:
        for q in queues:
            set_queue_len(pids, q, NFQUEUE_MAX_LEN, NFQUEUE_MAX_LEN * NFQUEUE_SOCKET_BYTES_PER_PACKET)
    return {"steady_pps": _median(runs, "steady_pps"), "drain_pps": _median(runs, "drain_pps"),
            "consumer_cpu_pct": _median(runs, "consumer_cpu_pct"),
            "harness_cpu_pct": _median(runs, "harness_cpu_pct"), "poll_ms": poll_s * 1000,
            "syns_per_consumer_cpu_second": _median(runs, "syns_per_consumer_cpu_second"),
            "other_cpu_pct": _median(runs, "other_cpu_pct"),
            "queued": runs[0]["queued"], "runs": runs}


# nice whose CFS weight is about N x nice 0's (1024): 2 -> 1991, 3 -> 3121, 4 -> 3906
AUTOGROUP_NICE = {1: 0, 2: -3, 3: -5, 4: -6}


def _autogroup_nice(path: Path) -> int | None:
    """The nice of a process's autogroup ("/autogroup-123 nice 0"), None without autogroup scheduling."""
    try:
        if Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() != "1":
            return None
        return int(path.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def worker_pids(parent: int) -> list[int]:
    """The children of `stealth server run --workers N` (its worker processes)."""
    kids: list[int] = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def workers_drain(bl: BenchLab, runner: Runner, n: int, repeats: int, workers: int,
                  poll_s: float) -> dict[str, Any]:
    """The --workers server's queues pre-filled together (about `n` junk SYNs each, spread by the
    kernel's flow hash over random spoofed sources), the worker of queue QUEUE+i pinned to core i, all
    resumed at once; timed like the single consumer's drain, on the sum of the queues' waiting counts."""
    queues = tuple(range(QUEUE, QUEUE + workers))
    kids = worker_pids(bl.server_pid())
    owners = [consumer_socket(kids, q) for q in queues]
    for _, s in owners:
        s.close()
    pinned = {pid: core for core, (pid, _) in enumerate(owners)}
    for pid, core in pinned.items():
        run_argv(["taskset", "-a", "-pc", str(core % (os.cpu_count() or 1)), str(pid)])
    # With autogroup scheduling every session shares one weight: the lone server had a whole group weight
    # on its core, while the workers (one session) would split one group weight over two cores and get
    # about a third of a core beside another session's busy task. Their group's nice is set so each
    # worker has about the lone process's weight on its core, for the probe only.
    group = Path(f"/proc/{bl.server_pid()}/autogroup")
    nice0 = _autogroup_nice(group)
    if nice0 is not None:
        group.write_text(str(AUTOGROUP_NICE[workers]))
    try:
        runner.drain()
        background = {"load_average": Path("/proc/loadavg").read_text().split()[:3],
                      "cpu_busy_pct_per_core": background_busy()}
        accepted0 = bl.accepted_counts().get("accepted_syns", 0)
        out = prefill_drain(bl, runner, kids, n, repeats, queues, poll_s)
        out["accepted"] = bl.accepted_counts().get("accepted_syns", 0) - accepted0
    finally:
        if nice0 is not None:
            group.write_text(str(nice0))
        for pid in pinned:
            run_argv(["taskset", "-a", "-pc", f"0-{(os.cpu_count() or 1) - 1}", str(pid)])
    out["worker_pid_core"] = {str(pid): core for pid, core in pinned.items()}
    out["autogroup_nice"] = None if nice0 is None else AUTOGROUP_NICE[workers]
    out["before"] = background  # other sessions' work on the cores just before, this harness idle
    for key in ("worker_cpu_pct", "queued_per_queue", "emptied_seconds_per_queue"):
        out[key] = [r[key] for r in out["runs"]]
    return out


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
            res["prefill_drain"] = prefill_drain(bl, runner, [proc.pid], *drain)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        srv.run(["iptables", "-t", "mangle", "-D", "INPUT", *rule])
    return res


def run(bl: BenchLab, quick: bool) -> dict[str, Any]:
    """Every verification-rate probe: machine ceilings (kernel DROP, C consumers), one stealth process
    (junk, 1% valid, all valid, drains, py-spy), two workers; the stealth server runs again after."""
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
    out["prefill_drain"] = _prefill_how(drain)
    steps = 3 if quick else 7
    _machine_ceilings(bl, runner, seconds, drain, out)
    _one_process(bl, runner, steps, drain, out)
    _profiles(bl, runner, seconds, quick, out)
    _two_workers(bl, runner, steps, drain, out)
    out["tokens_used"] = runner.offset
    return out


def _prefill_how(drain: tuple[int, int]) -> dict[str, Any]:
    """How the pre-filled drains are measured, for results.json."""
    return {
        "syns": drain[0], "repeats": drain[1],
        "how": "consumer stopped (SIGSTOP), about this many junk SYNs queued (queue max_len and the "
               "consumer's socket buffer raised for the probe through its own netlink socket), consumer "
               "resumed alone on core 1; rate = SYNs drained / time, from the kernel's waiting count "
               "sampled every ~0.2 ms on core 0; steady = 90% -> 10% of the queue; median of the repeats",
        "how_workers": "both workers stopped, about this many junk SYNs queued per queue (random spoofed "
                       "sources, spread over queues 50 and 51 by the kernel's --queue-balance flow hash), "
                       "queue 50's worker pinned to core 0 and queue 51's to core 1, both resumed by one "
                       "SIGCONT to their process group; with autogroup scheduling their session's nice is "
                       "set to -3 for the probe (a session's weight is shared by its tasks on all cores, so "
                       "each worker then weighs on its core about what the lone process, its own session "
                       "at nice 0, weighed on its one); the summed waiting count sampled every "
                       f"{WORKERS_DRAIN_POLL_S * 1000:g} ms by this harness on core 0 (beside worker 0, its "
                       "own CPU reported); steady = 90% -> 10% of the sum; median of the repeats",
    }


def _machine_ceilings(bl: BenchLab, runner: Runner, seconds: float, drain: tuple[int, int],
                      out: dict[str, Any]) -> None:
    """Kernel DROP, the C consumers and stealth with per-packet drop verdicts, into `out`."""
    # machine ceilings first, with the stealth server stopped (it owns the queue)
    bl.stop_server()
    print("bench: verify: kernel DROP and C consumers", file=sys.stderr, flush=True)
    out["kernel_drop"] = kernel_drop(bl, seconds)
    out["c_consumer_per_packet"] = c_consumer(bl, runner, "per-packet", drain)
    out["c_consumer_batch"] = c_consumer(bl, runner, "batch", drain)
    print("bench: verify: stealth server with per-packet drops, drain", file=sys.stderr, flush=True)
    start_per_packet_server(bl)
    runner.consumer_pid = bl.server_pid()
    out["stealth_per_packet_drain"] = prefill_drain(bl, runner, [bl.server_pid()], *drain)


def _one_process(bl: BenchLab, runner: Runner, steps: int, drain: tuple[int, int],
                 out: dict[str, Any]) -> None:
    """One stealth process: junk (flood and drain), 1% valid and all valid, into `out`."""
    bl.stop_server()
    bl.start_server()
    runner.consumer_pid = bl.server_pid()
    runner.counts = bl.accepted_counts
    print("bench: verify: stealth server, junk", file=sys.stderr, flush=True)
    out["junk"] = runner.search("junk", 0, steps)
    print("bench: verify: stealth server, drain", file=sys.stderr, flush=True)
    accepted0 = bl.accepted_counts().get("accepted_syns", 0)
    out["junk"]["prefill_drain"] = prefill_drain(bl, runner, [bl.server_pid()], *drain)
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


def _profiles(bl: BenchLab, runner: Runner, seconds: float, quick: bool, out: dict[str, Any]) -> None:
    """py-spy of the server under the junk flood (and, unless quick, the all-valid one), into `out`."""
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


def _two_workers(bl: BenchLab, runner: Runner, steps: int, drain: tuple[int, int],
                 out: dict[str, Any]) -> None:
    """Two worker processes: the junk flood and the drain, scaled against the one process, into `out`."""
    # two worker processes (--workers 2: NFQUEUE --queue-balance 50:51), unpinned; the sender stays on
    # core 0, so on a 2-core machine the workers share cores with it
    print("bench: verify: stealth server, junk, 2 workers", file=sys.stderr, flush=True)
    bl.stop_server()
    bl.start_server(workers=2)
    runner.consumer_pid = bl.server_pid()
    runner.cpu_pids = worker_pids(bl.server_pid())  # the parent only supervises
    out["junk_2_workers"] = runner.search("junk", 0, steps)
    one = max(1, out["junk"]["processed_pps_at_saturation"])
    out["junk_2_workers"]["scaling_vs_1_worker"] = round(
        out["junk_2_workers"]["processed_pps_at_saturation"] / one, 2)
    # the flood above is bounded by the sender's core; the drain shows what the two workers do alone
    print("bench: verify: stealth server, 2 workers, drain", file=sys.stderr, flush=True)
    two = out["junk_2_workers"]["prefill_drain"] = workers_drain(bl, runner, drain[0], drain[1], 2,
                                                                  WORKERS_DRAIN_POLL_S)
    one_drain_pps = out["junk"]["prefill_drain"]["steady_pps"]
    two["scaling_vs_1_worker"] = round(two["steady_pps"] / max(1, one_drain_pps), 2)
    # context, not the target: the ratio if each process had a whole core at the rate per CPU second it
    # showed (other sessions' work takes part of these cores)
    two["scaling_per_cpu_second"] = round(
        2 * two["syns_per_consumer_cpu_second"]
        / max(1, out["junk"]["prefill_drain"]["syns_per_consumer_cpu_second"]), 2)
    runner.cpu_pids = []
    bl.stop_server()
    bl.start_server()
