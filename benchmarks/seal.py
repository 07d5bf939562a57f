# Why: issue 11's figures for sealed ports, in namespaces of their own: a `stealth server run` that seals
# port 22 (backend: a real sshd on 127.0.0.1:22) and protects 5022 unsealed (a trivial loopback
# listener), beside an sshd on the unprotected port 2222 on every address (the direct path) and a plain
# listener on 5000. Measured: bulk throughput of an ssh session through the sealed port (ProxyCommand
# relay and --fdpass) against direct ssh; connect() to the sealed port (it returns after the proof
# exchange) against the unsealed one and a plain connect; many sealed sessions held at once (each a real
# knock and proof: relay processes, their memory and fds); and connections that knock but never prove
# (all reset at the deadline, nothing left behind in the acceptor). The timing runs inside the client
# namespace (`python -m benchmarks.seal worker ...`); the server-side samples come from /proc here.
import json
import os
import re
import resource
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_busy, cpu_times, summary_ms, time_cases
from benchmarks.lab import LISTENER, check_no_route_out, env_for_tools
from scripts.lib.netlab import Lab, LabError, wait_for
from scripts.lib.netlab import run as run_argv
from scripts.lib.stealthlab import SSHD, StealthLab

SERVER_ID = "bench-seal"
SEALED_PORT, UNSEALED_PORT, PLAIN_PORT, DIRECT_SSH_PORT = 22, 5022, 5000, 2222
DEADLINE_MS = 5000  # the server's default seal_deadline_ms
MAX_STARTUPS = 2500  # sshd: room for every pre-auth session the concurrency probe holds


def proc_children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids += [int(x) for x in (task / "children").read_text().split()]
    except OSError:
        pass
    return kids


def proc_descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = proc_children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += proc_children(p)
    return out


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS, PSS and private memory (smaps_rollup) in KiB, and open fds, of one process (zeros if gone)."""
    out = {"rss_kib": 0, "pss_kib": 0, "private_kib": 0, "fds": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_kib"] = int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            f = line.split()
            if f[0] == "Pss:":
                out["pss_kib"] = int(f[1])
            elif f[0] in ("Private_Clean:", "Private_Dirty:"):
                out["private_kib"] += int(f[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, IndexError, ValueError):
        pass
    return out


def mem_total(pids: list[int]) -> dict[str, Any]:
    mems = [proc_mem(p) for p in pids]
    mems = [m for m in mems if m["rss_kib"]]
    tot = {k: sum(m[k] for m in mems) for k in ("rss_kib", "pss_kib", "private_kib", "fds")}
    return {"processes": len(mems), **tot,
            "fds_per_process": sorted({m["fds"] for m in mems}),
            "pss_kib_per_process": round(tot["pss_kib"] / len(mems), 1) if mems else None,
            "private_kib_per_process": round(tot["private_kib"] / len(mems), 1) if mems else None}


# --- the harness side (root namespace) ----------------------------------------------------------------
@dataclass
class SealLab:
    lab: Lab
    sl: StealthLab
    commands: dict[str, str] = field(default_factory=dict)

    @property
    def server_pid(self) -> int:
        assert self.sl.server_proc is not None
        return self.sl.server_proc.pid

    def acceptor_pid(self) -> int:
        for pid in proc_children(self.server_pid):
            try:
                if b"stealth.acceptor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        raise RuntimeError("no acceptor process under the stealth server")

    def relay_pids(self) -> list[int]:
        return proc_children(self.acceptor_pid())

    def sshd_pid(self) -> int:
        assert self.sl.sshd_proc is not None
        return self.sl.sshd_proc.pid

    def server_log(self) -> str:
        try:
            return self.sl.server_log_path.read_text(errors="replace")
        except OSError:
            return ""


def _start_sshd(sl: StealthLab) -> None:
    """The test lab's sshd (stealthlab.start_sshd: port 22 on loopback only, 2222 on every address),
    with MaxStartups raised so the concurrency probe's pre-auth sessions are all served."""
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    d = sl.ssh_dir
    config = d / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1:22", "ListenAddress [::1]:22",
        f"ListenAddress 0.0.0.0:{DIRECT_SSH_PORT}", f"ListenAddress [::]:{DIRECT_SSH_PORT}",
        f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "LogLevel INFO", "UseDNS no", f"MaxStartups {MAX_STARTUPS}",
        "LoginGraceTime 120", "",
    ]))
    with open(d / "sshd.log", "w") as log:
        proc = sl.srv.popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
    wait_for(lambda: "LISTEN" in sl.srv.run(["ss", "-Hltn", "sport = :22"]).stdout or proc.poll() is not None,
             what="sshd to listen")
    if proc.poll() is not None:
        raise LabError(f"sshd exited: {(d / 'sshd.log').read_text()}")
    sl.sshd_proc = proc


def setup(lab: Lab) -> SealLab:
    ssh_dir = lab.tmp / "ssh"
    ssh_dir.mkdir(mode=0o700)
    for key in ("host_key", "user_key"):
        run_argv(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / key)])
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "user_key.pub").read_text())
    sl = StealthLab(lab, lab.tmp / "server-state", ssh_dir)
    init = ["server", "init", "--state-dir", str(sl.state_dir), "--server-id", SERVER_ID, "--ports",
            f"{SEALED_PORT},{UNSEALED_PORT}", "--seal", f"{SEALED_PORT}=127.0.0.1:{SEALED_PORT}",
            "--seal-deadline-ms", str(DEADLINE_MS)]
    sl.stealth(*init)
    _start_sshd(sl)
    sl.enroll("alice", f"{SEALED_PORT},{UNSEALED_PORT}")
    srv = sl.srv
    srv.popen([sys.executable, "-c", LISTENER, f"0.0.0.0:{PLAIN_PORT}", f"127.0.0.1:{UNSEALED_PORT}"])
    wait_for(lambda: f":{UNSEALED_PORT} " in srv.run(["ss", "-Hltn"]).stdout, what="listeners")
    sl.start_server()
    sb = SealLab(lab, sl)
    sb.commands["server"] = (f"stealth {' '.join(init)}; sshd with ListenAddress 127.0.0.1:22, [::1]:22, "
                             f"0.0.0.0:{DIRECT_SSH_PORT}, [::]:{DIRECT_SSH_PORT}, "
                             f"MaxStartups {MAX_STARTUPS}; "
                             "ip netns exec SRV stealth server run --state-dir STATE")
    return sb


def _worker_argv(sb: SealLab, cfg: dict[str, Any]) -> list[str]:
    cfg = {"srv": sb.sl.srv.ip4, "client_dir": str(sb.sl.client_dirs["alice"]), **cfg}
    return sb.sl.cli.argv([sys.executable, "-m", "benchmarks.seal", "worker", json.dumps(cfg)])


def _worker_command(cfg: dict[str, Any]) -> str:
    return f"ip netns exec CLI python -m benchmarks.seal worker '{json.dumps(cfg)}'"


def _run_worker(sb: SealLab, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    r = subprocess.run(_worker_argv(sb, cfg), capture_output=True, text=True, check=False,
                       env=env_for_tools(), timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"seal worker {cfg.get('mode')} failed: {r.stderr[-2000:]}")
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


def _proc_cpu(pid: int, waited: bool = False) -> float:
    """CPU seconds of `pid` (user + system), or of the children it waited for (cutime + cstime)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    i = 13 if waited else 11
    return (int(f[i]) + int(f[i + 1])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class ProcCpu:
    """CPU seconds of processes that appear while the block runs and are reaped by nobody this harness
    can read (stealth's relays are reaped by the kernel; ssh leaves its ProxyCommand to init): each one's
    last reading, sampled every `interval` s. `find` lists candidate pids; `once`: stop looking once one
    is found (a /proc scan is not free)."""

    def __init__(self, find: Callable[[], list[int]], interval: float = 0.02, once: bool = False) -> None:
        self.find, self.interval, self.once = find, interval, once
        self.before = set(find())
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            pids = set(self.last) if self.once and self.last else set(self.find()) - self.before
            for pid in pids:
                cpu = _proc_cpu(pid)
                if cpu:
                    self.last[pid] = cpu
            self._stop.wait(self.interval)

    def seconds(self) -> float:
        return sum(self.last.values())

    def __enter__(self) -> "ProcCpu":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _pids_with(needle: bytes) -> list[int]:
    """Processes whose command line contains `needle`."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if needle in Path(f"/proc/{d}/cmdline").read_bytes():
                    out.append(int(d))
            except OSError:
                continue
    return out


_DD = re.compile(r"^(\d+) bytes .* copied, ([0-9.]+) s", re.M)


def throughput(sb: SealLab, nbytes: int, rounds: int) -> dict[str, Any]:
    """`head -c N /dev/zero | ssh HOST 'dd of=/dev/null bs=1M'`, alternating direct (port 2222), through
    the sealed port with stealth-connect as a relaying ProxyCommand, and with --fdpass. The rate is dd's
    own (bytes over the seconds from dd's start to EOF, in the server namespace, after the login); the
    wall rate (login included) is beside it."""
    sl, host = sb.sl, sb.sl.srv.ip4
    remote = "dd of=/dev/null bs=1M"
    argvs = {
        "direct": sl.ssh_argv("alice", host, command=remote, knock=False, extra=["-p", str(DIRECT_SSH_PORT)]),
        "sealed_relay": sl.ssh_argv("alice", host, command=remote),
        "sealed_fdpass": sl.ssh_argv("alice", host, command=remote, fdpass=True),
    }
    shells = {m: f"head -c {nbytes} /dev/zero | {shlex.join(a)}" for m, a in argvs.items()}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in argvs}
    errors: dict[str, list[str]] = {m: [] for m in argvs}
    proxy_tag = f"stealth-connect\0--state-dir\0{sl.client_dirs['alice']}".encode()
    for _ in range(rounds):
        for mode, cmd in shells.items():
            c0, k0, d0 = cpu_times(), _children_cpu(), _proc_cpu(sb.sshd_pid(), waited=True)
            t = time.perf_counter()
            with ProcCpu(sb.relay_pids) as relay_cpu, \
                    ProcCpu(lambda: _pids_with(proxy_tag), once=True) as proxy_cpu:
                r = sl.cli.run(["sh", "-c", cmd], check=False, timeout=600, stdin=subprocess.DEVNULL)
                wall = time.perf_counter() - t
                time.sleep(0.1)  # the relay's last moments, and sshd reaping the session
            c1, k1, d1 = cpu_times(), _children_cpu(), _proc_cpu(sb.sshd_pid(), waited=True)
            m = _DD.search(r.stderr)
            if r.returncode != 0 or m is None or int(m.group(1)) != nbytes:
                errors[mode].append(f"rc={r.returncode} {r.stderr.strip()[-300:]}")
                continue
            got, secs = int(m.group(1)), float(m.group(2))
            runs[mode].append({"mb_per_s": round(got / secs / 1e6, 1), "dd_seconds": secs,
                               "wall_seconds": round(wall, 3), "wall_mb_per_s": round(got / wall / 1e6, 1),
                               "cpu_busy_pct_per_core": cpu_busy(c0, c1),
                               "cpu_seconds": {"client_side": round(k1 - k0, 3),
                                               "client_proxy": round(proxy_cpu.seconds(), 3),
                                               "sshd_session": round(d1 - d0, 3),
                                               "server_relay": round(relay_cpu.seconds(), 3)}})
    out: dict[str, Any] = {
        "bytes": nbytes, "rounds": rounds, "unit": "MB/s = 10^6 bytes per second",
        "cpu_seconds_how": "client_side: head and ssh (the children this harness waited for, ssh's "
                           "ProxyCommand not among them); client_proxy: the stealth-connect process, "
                           "sampled every 20 ms from /proc (its last <= 20 ms may be missed, and its "
                           "first ones, before the scan found it); sshd_session: the session's sshd "
                           "processes and dd (reaped by the listening sshd: its cutime + cstime); "
                           "server_relay: stealth's relay process for the session, sampled like the proxy",
    }
    _throughput_medians(out, shells, runs, errors, rounds)
    return out


def _throughput_medians(out: dict[str, Any], shells: dict[str, str], runs: dict[str, list[dict[str, Any]]],
                        errors: dict[str, list[str]], rounds: int) -> None:
    """Into `out`: each mode's medians, failures and command, and the sealed modes' ratios to direct."""
    for mode in shells:
        rates = [x["mb_per_s"] for x in runs[mode]]
        walls = [x["wall_mb_per_s"] for x in runs[mode]]
        cpu = {k: round(statistics.median(x["cpu_seconds"][k] for x in runs[mode]), 3)
               for k in ("client_side", "client_proxy", "sshd_session", "server_relay")} if rates else {}
        out[mode] = {"median_mb_per_s": round(statistics.median(rates), 1) if rates else None,
                     "median_wall_mb_per_s": round(statistics.median(walls), 1) if walls else None,
                     "median_cpu_seconds": cpu,
                     "runs": runs[mode], "failed": len(errors[mode]), "errors": errors[mode][:3],
                     "command": "ip netns exec CLI sh -c " + shlex.quote(shells[mode])}
    base = out["direct"]["median_mb_per_s"]
    for mode in ("sealed_relay", "sealed_fdpass"):
        v = out[mode]["median_mb_per_s"]
        out[mode]["ratio_to_direct"] = round(v / base, 3) if v and base else None
        # each round's ratio to the direct transfer of the same round (load that drifts over the run
        # weighs on both alike); only rounds where both succeeded
        paired = [a["mb_per_s"] / b["mb_per_s"] for a, b in zip(runs[mode], runs["direct"], strict=False)]
        if len(runs[mode]) == len(runs["direct"]) == rounds:
            out[mode]["median_paired_ratio"] = round(statistics.median(paired), 3)


def connect_overhead(sb: SealLab, samples: int) -> dict[str, Any]:
    cfg = {"mode": "connect", "samples": samples, "sealed": SEALED_PORT, "unsealed": UNSEALED_PORT,
           "plain": PLAIN_PORT}
    doc = _run_worker(sb, cfg, timeout=600)
    out: dict[str, Any] = {"command": _worker_command(cfg)}
    for name, values in doc["times"].items():
        errs = doc["errors"][name]
        out[name] = {**summary_ms(values), "failed": len(errs), "errors": errs[:3]}
    base = out["plain_connect"].get("p50_ms")
    for name in ("unsealed_connect", "sealed_connect"):
        p50 = out[name].get("p50_ms")
        out[name]["added_p50_ms_over_plain"] = round(p50 - base, 3) if p50 is not None and base else None
    for name, port in (("unsealed_connect", UNSEALED_PORT), ("sealed_connect", SEALED_PORT)):
        ph = {k: round(statistics.median(v) * 1000, 3) for k, v in doc["phases"].get(str(port), {}).items()
              if any(v)}  # a step never called (prove on the unsealed port) is left out
        p50 = out[name].get("p50_ms")
        if ph and p50 is not None:
            ph["rest"] = round(p50 - sum(ph.values()), 3)
            out[name]["phases_p50_ms"] = ph
    s, u = out["sealed_connect"].get("p50_ms"), out["unsealed_connect"].get("p50_ms")
    out["seal_added_p50_ms_over_unsealed"] = round(s - u, 3) if s is not None and u is not None else None
    out["what"] = {
        "plain_connect": f"socket.create_connection to the unprotected port {PLAIN_PORT} (a listener on "
                         "every address), closed at once",
        "unsealed_connect": "stealth_connect.connect.connect() to the protected, unsealed port "
                            f"{UNSEALED_PORT}: returns at the SYN-ACK",
        "sealed_connect": f"connect() to the sealed port {SEALED_PORT}: returns once the server's proof came "
                          "back and checked out (one more round trip, the relay forked by the acceptor)",
        "phases_p50_ms": "medians per sample of the client's steps inside connect(): claim (the durable "
                         "counter write), tuple_in_use (no local socket holds the knock's tuple: a read of "
                         "/proc/net/tcp), knock_socket (TCP_REPAIR, bind), record_success, prove (send "
                         "the proof, wait for and check the server's); rest: the SYN -> SYN-ACK round "
                         "trip through the server, profile lookup, token derivation",
    }
    return out


class Sampler:
    """The relay count (the acceptor's children) every `interval` s in a thread, for its peak."""

    def __init__(self, sb: SealLab, interval: float = 0.2) -> None:
        self.sb, self.interval, self.peak = sb, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, len(self.sb.relay_pids()))
            except RuntimeError:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait_relays(sb: SealLab, at_most: int, limit_s: float) -> float | None:
    t = time.monotonic()
    while time.monotonic() - t < limit_s:
        if len(sb.relay_pids()) <= at_most:
            return round(time.monotonic() - t, 2)
        time.sleep(0.1)
    return None


def _log_counts(text: str) -> dict[str, int]:
    """The acceptor's one-line reasons for resetting a sealed connection, counted."""
    out: dict[str, int] = {}
    for why in ("no session key for it", "no proof within the deadline", "a wrong proof", "unreachable"):
        n = text.count(why)
        if n:
            out[why] = n
    return out


def concurrent(sb: SealLab, sessions: int) -> dict[str, Any]:
    """`sessions` sealed sessions opened one after another with connect() (knock, proof both ways) and
    held; each must have had the server's proof (connect() checks it) and then sshd's banner. While they
    are held: the server's relay processes (memory, fds), the acceptor, and sshd's pre-auth processes."""
    base_relays = len(sb.relay_pids())
    log0 = len(sb.server_log())
    cfg = {"mode": "hold", "sessions": sessions, "port": SEALED_PORT}
    proc = subprocess.Popen(_worker_argv(sb, cfg), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_for_tools(), start_new_session=True)
    sb.lab.procs.append(proc)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"hold worker: {proc.communicate(timeout=30)[1][-2000:]}")
        opened: dict[str, Any] = json.loads(line)
        time.sleep(0.5)  # let the last relays settle
        relays = sb.relay_pids()
        held = {
            "relays": mem_total(relays),
            "acceptor": proc_mem(sb.acceptor_pid()),
            "daemon": proc_mem(sb.server_pid),
            "sshd_preauth": mem_total(proc_descendants(sb.sshd_pid())),
        }
        proc.stdin.write("close\n")
        proc.stdin.flush()
        closed = json.loads(proc.stdout.readline() or "{}")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    gone = _wait_relays(sb, base_relays, 60)
    n_relays = held["relays"]["processes"]
    rel = held["relays"]
    return {
        "command": _worker_command(cfg), "sessions": sessions, **opened, **closed,
        "relay_processes": n_relays, "relays_before": base_relays,
        "relay_memory": rel, "acceptor_while_held": held["acceptor"], "daemon_while_held": held["daemon"],
        "sshd_preauth_processes": held["sshd_preauth"],
        "relays_gone_seconds_after_close": gone,
        "acceptor_log": _log_counts(sb.server_log()[log0:]),
        "how": "relay processes = the acceptor's children while the sessions are held; memory from "
               "/proc/PID/status (VmRSS) and /proc/PID/smaps_rollup (Pss, Private_Clean + Private_Dirty); "
               "fds = entries of /proc/PID/fd",
    }


def no_proof(sb: SealLab, connections: int) -> dict[str, Any]:
    """`connections` real knocks on the sealed port (connect() with the profile's seal taken off, so no
    proof is sent) held open: each must be reset at the deadline without one byte of the service. The
    acceptor's memory and fds and the relay count are sampled before and after."""
    base_relays = _wait_relays(sb, 0, 30)
    acc = sb.acceptor_pid()
    before_mem, before_relays = proc_mem(acc), len(sb.relay_pids())
    log0 = len(sb.server_log())
    cfg = {"mode": "noproof", "connections": connections, "port": SEALED_PORT,
           "deadline_s": DEADLINE_MS / 1000}
    with Sampler(sb) as sampler:
        doc = _run_worker(sb, cfg, timeout=connections * 0.5 + 120)
    gone = _wait_relays(sb, before_relays, 30)
    time.sleep(2)
    after_mem, after_relays = proc_mem(acc), len(sb.relay_pids())
    growth = {"acceptor_rss_kib": after_mem["rss_kib"] - before_mem["rss_kib"],
              "acceptor_pss_kib": after_mem["pss_kib"] - before_mem["pss_kib"],
              "acceptor_fds": after_mem["fds"] - before_mem["fds"], "relays": after_relays - before_relays}
    before = {"acceptor": before_mem, "relays": before_relays}
    after = {"acceptor": after_mem, "relays": after_relays}
    log = sb.server_log()[log0:]
    closed = doc.pop("closed_after_s", [])
    dl = DEADLINE_MS / 1000
    return {
        "command": _worker_command(cfg), "connections": connections, **doc, "deadline_ms": DEADLINE_MS,
        "reset_after_connect": {**summary_ms(closed),
                                "min_ms": round(min(closed) * 1000, 1) if closed else None},
        "reset_before_deadline": sum(1 for c in closed if c < dl),
        "reset_within_deadline_plus_1s": sum(1 for c in closed if dl <= c < dl + 1),
        "relays_peak": sampler.peak, "relays_waited_before_s": base_relays, "relays_gone_seconds": gone,
        "before": before, "after": after, "growth": growth,
        "acceptor_log": _log_counts(log),
        "daemon_accepts": log.count(f"accept client=alice port={SEALED_PORT} "),
        "acceptor_pid": acc, "acceptor_same_after": acc == sb.acceptor_pid(),
    }


def run(quick: bool) -> dict[str, Any]:
    """The whole section, in namespaces of its own; a figure that fails is recorded as its error."""
    sizes = {"bytes": 200_000_000 if quick else 1_000_000_000, "rounds": 5, "connect_samples": 30 if quick
             else 200, "sessions": 200 if quick else 1000, "no_proof": 200 if quick else 1000}
    out: dict[str, Any] = {"sizes": sizes}
    with Lab() as lab:
        sb = setup(lab)
        check_no_route_out(sb.sl)
        out["setup"] = {"command": sb.commands["server"], "ready": sb.sl.ready_line}
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("throughput", lambda: throughput(sb, sizes["bytes"], sizes["rounds"])),
            ("connect", lambda: connect_overhead(sb, sizes["connect_samples"])),
            ("concurrent", lambda: concurrent(sb, sizes["sessions"])),
            ("no_proof", lambda: no_proof(sb, sizes["no_proof"])),
        ]
        try:
            for name, fn in steps:
                print(f"bench: sealed: {name}", file=sys.stderr, flush=True)
                t = time.monotonic()
                try:
                    out[name] = fn()
                except Exception as e:  # noqa: BLE001 -- one figure failing must not lose the others
                    traceback.print_exc()
                    out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
                out[name]["seconds"] = round(time.monotonic() - t, 1)
        finally:
            sb.sl.stop_server()
    return out


# --- the worker (client namespace) --------------------------------------------------------------------
def _raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, n)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))


def _worker_connect(cfg: dict[str, Any]) -> dict[str, Any]:
    from stealth_connect.connect import connect
    from stealth_connect.profiles import ClientStore

    from benchmarks.latency_worker import CLIENT_PHASES, time_phases

    srv = cfg["srv"]
    store = ClientStore(Path(cfg["client_dir"]))
    acc = dict.fromkeys((*CLIENT_PHASES, "prove"), 0.0)
    timed = time_phases(sys.modules["stealth_connect.connect"], acc, (*CLIENT_PHASES, "prove"))
    phases: dict[str, dict[str, list[float]]] = {}

    def plain() -> None:
        socket.create_connection((srv, cfg["plain"]), timeout=5).close()

    def knock(port: int) -> Callable[[], None]:
        def one() -> None:
            acc.update(dict.fromkeys(timed, 0.0))
            connect(srv, port, store=store, timeout=5)[0].close()
            for name in timed:
                phases.setdefault(str(port), {}).setdefault(name, []).append(acc[name])
        return one

    cases = {"plain_connect": plain, "unsealed_connect": knock(cfg["unsealed"]),
             "sealed_connect": knock(cfg["sealed"])}
    times, errors = time_cases(cases, cfg["samples"])
    return {"times": times, "errors": errors, "phases": phases}


def _read_banners(socks: list[socket.socket], limit_s: float) -> int:
    """How many of `socks` delivered a full "SSH-..." line (sshd's banner) within `limit_s`."""
    sel = selectors.DefaultSelector()
    bufs: dict[int, bytes] = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s.fileno()] = b""
    ok = 0
    end = time.monotonic() + limit_s
    while sel.get_map() and time.monotonic() < end:
        for key, _ in sel.select(max(0.0, end - time.monotonic())):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                chunk = sock.recv(256)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            buf = bufs[sock.fileno()] + chunk
            bufs[sock.fileno()] = buf
            if b"\n" in buf or not chunk:
                ok += buf.startswith(b"SSH-") and b"\n" in buf
                sel.unregister(sock)
    sel.close()
    return ok


def _worker_hold(cfg: dict[str, Any]) -> None:
    from stealth_connect.connect import connect
    from stealth_connect.profiles import ClientStore

    n = cfg["sessions"]
    _raise_fd_limit(2 * n + 256)
    store = ClientStore(Path(cfg["client_dir"]))
    socks: list[socket.socket] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    for _ in range(n):
        try:
            socks.append(connect(cfg["srv"], cfg["port"], store=store, timeout=10)[0])
        except Exception as e:  # noqa: BLE001 -- counted and reported
            errors.append(repr(e)[:200])
    opened_s = time.perf_counter() - t0
    banners = _read_banners(socks, 60)
    print(json.dumps({"proved": len(socks), "banners": banners, "open_errors": len(errors),
                      "errors": errors[:3], "open_seconds": round(opened_s, 2),
                      "opens_per_second": round(len(socks) / opened_s, 1) if opened_s else None}), flush=True)
    sys.stdin.readline()
    t = time.perf_counter()
    for s in socks:
        s.close()
    print(json.dumps({"close_seconds": round(time.perf_counter() - t, 3)}), flush=True)


def _worker_noproof(cfg: dict[str, Any]) -> dict[str, Any]:
    from stealth_connect.connect import connect
    from stealth_connect.profiles import ClientStore, load_profile

    n, srv = cfg["connections"], cfg["srv"]
    _raise_fd_limit(2 * n + 256)
    store = ClientStore(Path(cfg["client_dir"]))
    prof = load_profile(store.find(srv))
    silent = replace(prof, sealed=())  # the same key and counters; connect() then sends no proof
    sel = selectors.DefaultSelector()
    opened: dict[int, float] = {}  # fd -> when connect() returned (an fd is reused once closed)
    connected = 0
    closed_after: list[float] = []
    how = {"rst": 0, "fin": 0, "bytes": 0, "open_at_end": 0}
    errors: list[str] = []

    def settle(timeout: float) -> None:
        for key, _ in sel.select(timeout):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            now = time.monotonic()
            try:
                data = s.recv(64)
                how["bytes" if data else "fin"] += 1
            except ConnectionResetError:
                how["rst"] += 1
            except OSError:
                how["fin"] += 1
            closed_after.append(now - opened[s.fileno()])
            sel.unregister(s)
            s.close()

    t0 = time.perf_counter()
    for _ in range(n):
        try:
            s, _key = connect(srv, cfg["port"], silent, store=store, timeout=10)
        except Exception as e:  # noqa: BLE001 -- counted and reported
            errors.append(repr(e)[:200])
            continue
        opened[s.fileno()] = time.monotonic()
        connected += 1
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        settle(0)
    opened_s = time.perf_counter() - t0
    end = time.monotonic() + cfg["deadline_s"] + 15
    while sel.get_map() and time.monotonic() < end:
        settle(max(0.0, min(0.5, end - time.monotonic())))
    how["open_at_end"] = len(sel.get_map())
    return {"connected": connected, "open_errors": len(errors), "errors": errors[:3],
            "open_seconds": round(opened_s, 2), "ended": how, "closed_after_s": closed_after}


def worker_main(argv: list[str]) -> int:
    cfg: dict[str, Any] = json.loads(argv[0])
    mode = cfg["mode"]
    if mode == "connect":
        print(json.dumps(_worker_connect(cfg)))
    elif mode == "hold":
        _worker_hold(cfg)
    elif mode == "noproof":
        print(json.dumps(_worker_noproof(cfg)))
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    sys.exit(worker_main(sys.argv[2:]))
