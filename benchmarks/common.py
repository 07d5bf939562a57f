# Why: what every benchmark section shares: percentiles, the machine description written beside every
# figure, the C tools built fresh each run (never committed), the NFQUEUE counters from /proc read inside
# a namespace, and per-core CPU use, so each section reports numbers the same way.
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "benchmarks" / "build"  # git-ignored (build/)
CSRC = ROOT / "benchmarks" / "csrc"
VENV_BIN = Path(sys.executable).parent
COMMANDS: list[str] = []  # every external command a section ran that matters for a figure


def note_command(argv: Sequence[str]) -> None:
    line = " ".join(argv)
    if line not in COMMANDS:
        COMMANDS.append(line)


def build_c() -> dict[str, Path]:
    BUILD.mkdir(exist_ok=True)
    out = {
        "synflood": (BUILD / "synflood", ["gcc", "-O2", "-Wall", "-o", str(BUILD / "synflood"),
                                          str(CSRC / "synflood.c")]),
        "nfqconsumer": (BUILD / "nfqconsumer", ["gcc", "-O2", "-Wall", "-o", str(BUILD / "nfqconsumer"),
                                                str(CSRC / "nfqconsumer.c"), "-lnetfilter_queue",
                                                "-lnfnetlink"]),
    }
    for _path, argv in out.values():
        subprocess.run(argv, check=True)
        note_command(argv)
    return {name: path for name, (path, _) in out.items()}


def time_cases(cases: dict[str, Callable[[], Any]], samples: int
               ) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Run every case `samples` times, interleaved (against drift): seconds per successful sample, and
    the first 200 characters of each failure, by case."""
    times: dict[str, list[float]] = {k: [] for k in cases}
    errors: dict[str, list[str]] = {k: [] for k in cases}
    for _ in range(samples):
        for name, fn in cases.items():
            t = time.perf_counter()
            try:
                fn()
                times[name].append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 -- a failed sample is counted and reported, not fatal
                errors[name].append(repr(e)[:200])
    return times, errors


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary_ms(values_s: Sequence[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms), "p50_ms": round(statistics.median(ms), 3), "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3), "max_ms": round(max(ms), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    deb = Path("/etc/debian_version")
    fs = subprocess.run(["df", "-T", "/tmp"], capture_output=True, text=True, check=False).stdout.splitlines()
    return {
        "kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count(),
        "cpu_model": cpu, "mem_gib": round(mem_kb / 2**20, 1),
        "tmp_fs": fs[-1].split()[1] if len(fs) > 1 else "",
        "debian": deb.read_text().strip() if deb.exists() else "",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                     text=True, check=False).stdout.strip(),
        "packages": _versions(["fwknop-server", "fwknop-client", "knockd", "openssh-server", "iptables",
                               "libnetfilter-queue-dev"]),
    }


def _versions(pkgs: Sequence[str]) -> dict[str, str]:
    out = {}
    for p in pkgs:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], capture_output=True, text=True,
                           check=False)
        out[p] = r.stdout.strip() if r.returncode == 0 else "not installed"
    return out


@dataclass
class QueueCounters:
    """One line of /proc/net/netfilter/nfnetlink_queue."""

    queue: int
    waiting: int  # queue_total: packets waiting for a verdict right now
    dropped: int  # queue_dropped: the queue was full
    user_dropped: int  # queue_user_dropped: netlink could not deliver (ENOBUFS)
    id_sequence: int  # ids handed out so far: every packet that entered the queue, kept or dropped


def queue_counters(ns: str, queue: int, span: int = 8) -> QueueCounters | None:
    """Counters of queue .. queue+span-1 summed (several workers each bind one), or None if none."""
    text = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/netfilter/nfnetlink_queue"],
                          capture_output=True, text=True, check=False).stdout
    rows = [[int(x) for x in line.split()[:8]] for line in text.splitlines() if len(line.split()) >= 8]
    rows = [f for f in rows if queue <= f[0] < queue + span]
    if not rows:
        return None
    return QueueCounters(queue, *(sum(f[i] for f in rows) for i in (2, 5, 6, 7)))


def cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per core."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            out.append((sum(v) - idle, sum(v)))
    return out


def cpu_busy(before: list[tuple[int, int]], after: list[tuple[int, int]]) -> list[float]:
    return [round(100 * (a[0] - b[0]) / max(1, a[1] - b[1]), 1) for b, a in zip(before, after, strict=True)]


def background_busy(seconds: float = 0.5) -> list[float]:
    """Busy % per core while this harness is idle: what other work on the machine takes."""
    before = cpu_times()
    time.sleep(seconds)
    return cpu_busy(before, cpu_times())


def proc_cpu_seconds(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def dump(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)
