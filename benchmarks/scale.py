# Why: issue 4 §3. How the server's start-up, memory and per-SYN cost grow with the number of enrolled
# clients (1k, 100k, 1M). Each size runs in a fresh child process doing exactly what `stealth server run`
# does before it binds the queue (server.toml, the counter journal, clients.jsonl streamed into the token
# table), then times Gate.receive for junk and for valid knocks (an accept spends a counter and refills
# the window: one MAC out, one in, per port), one durable commit, and a reload after one revoke. The
# parent samples the child's RSS and kills it past a memory or time ceiling, so a size that does not fit
# is reported with how far it got, not as a crash.
import cProfile
import io
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import note_command, proc_rss_kib
from benchmarks.enroll import enroll_clients

SERVER_ID = "scale"
PORTS = (22,)

if TYPE_CHECKING:
    from stealth.core.table import TokenTable
    from stealth.counterlog import CounterLog
    from stealth.server_config import ServerConfig
    from stealth.server_state import ServerState


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _emit(**kw: Any) -> None:
    print(json.dumps(kw), flush=True)


def child(state_dir: Path, junk_n: int, valid_n: int, reload: bool = True) -> None:
    """In a fresh process: the server's start, per-SYN costs and (unless not `reload`) a reload, each
    phase emitted as one JSON line."""
    state, config, log, table = _start(state_dir)
    names = _lookup(config, log, table, junk_n, valid_n)
    if not reload:
        return
    _reload(state, config, table, names)


def _start(state_dir: Path) -> "tuple[ServerState, ServerConfig, CounterLog, TokenTable]":
    from stealth.loader import build_table
    from stealth.server_state import ServerState

    # exactly Server.start(): open (and repair) the counter journal, stream clients.jsonl into the table
    t0 = time.perf_counter()
    state = ServerState(state_dir)
    config = state.load_config()
    log = state.counter_log()
    counters = log.open()
    t1 = time.perf_counter()
    _emit(phase="load_state", seconds=round(t1 - t0, 3), rss_mib=round(_rss_kib() / 1024, 1))
    table = build_table(state, config, counters)
    t2 = time.perf_counter()
    _emit(phase="build_table", seconds=round(t2 - t1, 3), rss_mib=round(_rss_kib() / 1024, 1),
          entries=len(table), slots=table.cap, start_seconds=round(t2 - t0, 3),
          max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return state, config, log, table


def _lookup(config: "ServerConfig", log: "CounterLog", table: "TokenTable", junk_n: int,
            valid_n: int) -> list[str]:
    from benchmarks.packets import syn4
    from stealth.core.gate import Gate, Verdict
    from stealth.core.secret import Secret
    from stealth.core.token import Binding, derive

    gate = Gate(table)
    rnd = random.Random(1)  # noqa: S311 -- junk packets, not secrets
    dst = bytes([198, 51, 100, 1])
    junk = [syn4(rnd.getrandbits(32).to_bytes(4, "big"), dst, rnd.randrange(32768, 61000, 2), 22,
                 rnd.randrange(1, 1 << 32)) for _ in range(junk_n)]
    t = time.perf_counter()
    for p in junk:
        gate.receive(p, t)
    junk_us = (time.perf_counter() - t) / junk_n * 1e6
    names = list(table.clients)[:valid_n]
    binding = Binding(config.server_id)
    valid = []
    for name in names:
        knock = derive(table.clients[name].spec.key, binding, 22, 1)
        assert knock.sport is not None
        valid.append(syn4(bytes([198, 18, 0, 1]), dst, knock.sport, 22, knock.isn))
    t = time.perf_counter()
    accepted = sum(gate.receive(p, t).verdict is Verdict.ACCEPT for p in valid)
    accept_us = (time.perf_counter() - t) / max(1, len(valid)) * 1e6
    key = Secret(os.urandom(32))
    t = time.perf_counter()
    for c in range(2000):
        derive(key, binding, 22, c + 1)
    derive_us = (time.perf_counter() - t) / 2000 * 1e6
    # the durable part of an accept: one journal record, one fdatasync (what a commit of one knock costs)
    ident = table.ident_of(names[0])
    commit_s = []
    for c in range(200):
        t = time.perf_counter()
        log.append([(ident, 1000 + c)])
        commit_s.append(time.perf_counter() - t)
    commit_s.sort()
    _emit(phase="lookup", junk_receive_us=round(junk_us, 3), accept_receive_us=round(accept_us, 3),
          accepted=accepted, of=len(valid), derive_us=round(derive_us, 3),
          refill_us=round(accept_us - junk_us, 3), commit_one_p50_ms=round(commit_s[100] * 1e3, 3),
          rss_mib=round(_rss_kib() / 1024, 1),
          max_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    return names


def _reload(state: "ServerState", config: "ServerConfig", table: "TokenTable", names: list[str]) -> None:
    from stealth.loader import check_clients

    # a reload after one admin change: validate all of clients.jsonl, then sync the table with it
    state.revoke(names[-1])
    t = time.perf_counter()
    check_clients(state, config)
    build_seconds = time.perf_counter() - t
    from stealth.loader import sync_table

    sync_table(table, state, config, {})
    _emit(phase="reload", seconds=round(time.perf_counter() - t, 3), validate_seconds=round(build_seconds, 3),
          clients=len(table.clients))


def profile_child(state_dir: Path) -> None:
    """cProfile of the start-up path (journal + clients.jsonl + table): where the seconds go."""
    from stealth.loader import build_table
    from stealth.server_state import ServerState

    prof = cProfile.Profile()
    prof.enable()
    state = ServerState(state_dir)
    config = state.load_config()
    build_table(state, config, state.counter_log().open())
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    _emit(phase="profile", text=buf.getvalue())


def make_state(root: Path, n: int) -> tuple[Path, float]:
    from stealth.server_config import ServerConfig
    from stealth.server_state import ServerState

    state_dir = root / f"state-{n}"
    state = ServerState(state_dir)
    state.init(ServerConfig(SERVER_ID, PORTS))
    t = time.perf_counter()
    enroll_clients(state_dir, n, PORTS)
    return state_dir, time.perf_counter() - t


def measure(root: Path, n: int, deadline_s: float, rss_limit_mib: int,
            reload: bool = True) -> dict[str, Any]:
    state_dir, write_s = make_state(root, n)
    result: dict[str, Any] = {
        "clients": n, "enroll_seconds": round(write_s, 2),
        "clients_file_mib": round((state_dir / "clients.jsonl").stat().st_size / 2**20, 1),
    }
    argv = [sys.executable, "-m", "benchmarks.scale", "child", str(state_dir), "100000",
            str(min(n, 5000)), "reload" if reload else "no-reload"]
    note_command(["python", "-m", "benchmarks.scale", "child", "STATE_DIR", "100000", "min(N,5000)",
                  "reload" if reload else "no-reload"])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    start = time.monotonic()
    peak = 0
    killed = None
    while proc.poll() is None:
        peak = max(peak, proc_rss_kib(proc.pid))
        elapsed = time.monotonic() - start
        if peak / 1024 > rss_limit_mib or elapsed > deadline_s:
            killed = (f"killed after {elapsed:.0f} s at {peak / 1024:.0f} MiB RSS (ceiling "
                      f"{rss_limit_mib} MiB / {deadline_s:.0f} s)")
            proc.kill()
            break
        time.sleep(0.1)
    out, _ = proc.communicate()
    for line in out.splitlines():
        doc = json.loads(line)
        result[doc.pop("phase")] = doc
    result["peak_rss_mib_sampled"] = round(peak / 1024, 1)
    result["wall_seconds"] = round(time.monotonic() - start, 2)
    if killed:
        result["did_not_finish"] = killed
    if n >= 1_000_000 or killed:
        _cleanup(state_dir)
    return result


def _cleanup(path: Path) -> None:
    subprocess.run(["rm", "-rf", str(path)], check=False)


def run(root: Path, sizes: list[int], deadline_s: float, rss_limit_mib: int,
        profile_n: int = 20_000, reload_below: int = 10**9) -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": []}
    for n in sizes:
        print(f"bench: scale {n} clients", file=sys.stderr, flush=True)
        out["sizes"].append(measure(root, n, deadline_s, rss_limit_mib, reload=n < reload_below))
    # per-client costs: the slope between the smallest and the largest finished size (so the
    # interpreter's fixed start-up cost is not charged per client), and the start-up profile
    done = sorted((s for s in out["sizes"] if "build_table" in s and "did_not_finish" not in s),
                  key=lambda s: s["clients"])
    if len(done) >= 2:
        small, big = done[0], done[-1]
        dn = big["clients"] - small["clients"]
        sec = (big["build_table"]["start_seconds"] - small["build_table"]["start_seconds"]) / dn
        rss = (big["build_table"]["max_rss_mib"] - small["build_table"]["max_rss_mib"]) / dn
        per = {"start_ms_per_1k": round(sec * 1e6, 2), "rss_kib_per_client": round(rss * 1024, 3),
               "from_sizes": [small["clients"], big["clients"]]}
        per["extrapolated_1m_start_seconds"] = round(
            small["build_table"]["start_seconds"] + sec * (1_000_000 - small["clients"]), 1)
        per["extrapolated_1m_rss_gib"] = round(
            (small["build_table"]["max_rss_mib"] + rss * (1_000_000 - small["clients"])) / 1024, 2)
        out["per_client"] = per
    state_dir, _ = make_state(root, profile_n)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scale", "profile", str(state_dir)],
                          capture_output=True, text=True, check=False, cwd=Path(__file__).parent.parent)
    for line in proc.stdout.splitlines():
        doc = json.loads(line)
        if doc.get("phase") == "profile":
            out["startup_profile_clients"] = profile_n
            out["startup_profile"] = doc["text"]
    return out


if __name__ == "__main__":
    if sys.argv[1] == "child":
        child(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "reload")
    elif sys.argv[1] == "profile":
        profile_child(Path(sys.argv[2]))
