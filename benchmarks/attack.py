# Why: issue 4 §4. Real ssh logins through stealth-connect while junk SYNs flood the protected port at
# 25/50/100/150% of the server's measured junk saturation rate: how many logins succeed, and how long the
# slow ones take. The flood is the C sender, paced, from the attacker namespace (spoofed 198.18.0.0/15).
import json
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import (
    QueueCounters,
    cpu_busy,
    cpu_times,
    note_command,
    pct,
    queue_counters,
    summary_ms,
)
from benchmarks.lab import QUEUE, BenchLab


def run(bl: BenchLab, saturation_pps: float, logins: int, level_cap_s: float) -> dict[str, Any]:
    argv = bl.sl.ssh_argv("alice", bl.srv.ip4, command="true")
    note_command(["ip netns exec CLI", *argv])
    out: dict[str, Any] = {"saturation_pps": round(saturation_pps), "logins_per_level": logins,
                           "level_time_cap_s": level_cap_s, "levels": {}}
    for _ in range(600):  # start on an empty queue
        q = queue_counters(bl.srv.ns, QUEUE)
        if q is None or q.waiting == 0:
            break
        time.sleep(0.1)
    for level in (25, 50, 100, 150):
        rate = saturation_pps * level / 100
        print(f"bench: attack at {level}% ({rate:.0f} SYN/s)", file=sys.stderr, flush=True)
        flood = subprocess.Popen(bl.flood_argv("junk", rate, level_cap_s + 120), stdout=subprocess.PIPE,
                                 text=True)
        note_command(["ip netns exec ATK", *bl.flood_argv("junk", rate, level_cap_s + 120)[4:]])
        time.sleep(0.5)
        q0 = queue_counters(bl.srv.ns, QUEUE) or QueueCounters(QUEUE, 0, 0, 0, 0)
        c0 = cpu_times()
        times: list[float] = []
        failures: list[str] = []
        start = time.monotonic()
        attempted = 0
        while attempted < logins and time.monotonic() - start < level_cap_s:
            attempted += 1
            t = time.perf_counter()
            try:
                r = bl.cli.run(argv, check=False, timeout=60, stdin=subprocess.DEVNULL)
                ok, err = r.returncode == 0, r.stderr.strip()[-160:]
            except subprocess.TimeoutExpired:
                ok, err = False, "timeout 60 s"
            if ok:
                times.append(time.perf_counter() - t)
            else:
                failures.append(err)
        elapsed = time.monotonic() - start
        q1 = queue_counters(bl.srv.ns, QUEUE) or q0
        c1 = cpu_times()
        flood.terminate()
        fout, _ = flood.communicate(timeout=10)
        sender = json.loads(fout) if fout.strip() else {}
        dropped = (q1.dropped - q0.dropped) + (q1.user_dropped - q0.user_dropped)
        entered = q1.id_sequence - q0.id_sequence + (q1.dropped - q0.dropped)
        out["levels"][str(level)] = {
            "flood_pps_offered": round(rate), "attempted": attempted, "succeeded": len(times),
            "success_rate": round(len(times) / attempted, 4) if attempted else None,
            **{k: v for k, v in summary_ms(times).items() if k != "n"},
            "p99_login_ms": round(pct([t * 1000 for t in times], 99), 1) if times else None,
            "queue_entered_pps": round(entered / elapsed), "queue_dropped_pct":
                round(100 * dropped / entered, 2) if entered else 0.0,
            "cpu_busy_pct_per_core": cpu_busy(c0, c1), "failures": failures[:3],
            "sender_seconds": sender.get("seconds"),
        }
        time.sleep(1)
    return out
