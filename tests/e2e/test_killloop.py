# Why: crash-safe counters and fail closed, sessions survive, under fire. Hundreds of ssh logins through
# stealth-connect while `kill -9` hits the server's process group (also during its start-up) and
# stealth-connect itself at random moments drawn from a seeded RNG (the seed is printed and named in
# every failure); then a client pushed far past the window recovers by itself while the server is killed
# around its recovery knocks. The evidence comes from three independent places: the server's accept log,
# counters.json sampled between rounds, and a tcpdump capture on the server side. Also run standalone,
# longer, by scripts/killloop, which writes its figures to benchmarks/killloop.json.
import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.privileged

W = 16  # the server's default look-ahead window
SSH_PORT = 22
ROUNDS = int(os.environ.get("STEALTH_KILLLOOP_ROUNDS", "120"))  # scripts/killloop runs 500
KNOCK_TIMEOUT = "8"  # the kernel resends the SYN after 1, 3 and 7 s: past the longest outage + restart
SESSION_SECONDS = 5
ACCEPT_RE = re.compile(
    r"accept client=(?P<client>\S+) port=(?P<port>\d+) src=\[(?P<src>[^\]]+)\]:(?P<sport>\d+) "
    r"counter=(?P<counter>\d+)(?P<recovery> recovery)?$"
)
SYN_BPF = f"tcp port {SSH_PORT} and tcp[tcpflags] & tcp-syn != 0"  # SYNs and SYN-ACKs only


@dataclass
class Accept:
    run: int  # index of the server run (log file) it appeared in
    client: str
    sport: int
    src: str
    counter: int
    recovery: bool


@dataclass
class Figures:
    seed: int
    rounds: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    failed_rounds_without_connect_kill: list[int] = field(default_factory=list)
    server_kills: int = 0
    server_startup_kills: int = 0
    connect_kills: int = 0
    connect_kill_misses: int = 0
    server_runs: int = 0
    accepts: int = 0
    recovery_accepts: int = 0
    recovery_rounds: int = 0
    recovery_server_kills: int = 0
    accepted_but_unanswered: int = 0
    persisted_but_unlogged: int = 0
    syn_acked_tokens: int = 0
    counters_used: dict[str, int] = field(default_factory=dict)
    counters_lost_in_loop: dict[str, int] = field(default_factory=dict)
    max_consecutive_lost_in_loop: dict[str, int] = field(default_factory=dict)
    max_consecutive_lost: dict[str, int] = field(default_factory=dict)  # loop and the final phase
    lost_before_final_knock: dict[str, int] = field(default_factory=dict)
    counter_samples: int = 0
    sessions: int = 0
    server_kills_during_open_sessions: int = 0
    down_windows: int = 0
    knocks_while_down: int = 0
    elapsed_s: float = 0.0


@dataclass
class Session:
    proc: "subprocess.Popen[str]"
    kills_seen: int = 0


@dataclass
class Loop:
    sl: Any
    seed: int
    rounds: int
    log: Any = print
    fig: Figures = field(init=False)
    rng: random.Random = field(init=False)
    samples: list[dict[str, int]] = field(default_factory=list)
    down: list[tuple[float, float]] = field(default_factory=list)
    session: Session | None = None
    sessions_done: list[tuple[int, str, str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fig = Figures(self.seed)
        self.rng = random.Random(self.seed)  # noqa: S311 -- a reproducible schedule, not a secret

    # --- the server --------------------------------------------------------------------------------
    def _reap_server(self) -> None:
        """kill -9 the server's whole process group; keep its log (the next run gets a new file)."""
        proc = self.sl.server_proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.sl.server_proc = None
        self.sl.server_log.append(self.sl.server_log_path.read_text())

    def kill_server(self) -> float:
        if self.session is not None and self.session.proc.poll() is None:
            self.session.kills_seen += 1
            self.fig.server_kills_during_open_sessions += 1
        self._reap_server()
        self.fig.server_kills += 1
        at = time.time()
        self.sample_counters()
        return at

    def start_server(self, startup_kill_after: float | None) -> None:
        """Restart; with `startup_kill_after`, first start one that is killed that long into start-up."""
        from scripts.lib.stealthlab import tool

        if startup_kill_after is not None:
            self.sl.server_log_path = self.sl.lab.tmp / f"server-{len(self.sl.server_log)}.log"
            with open(self.sl.server_log_path, "w") as err:
                self.sl.server_proc = self.sl.srv.popen(
                    [tool("stealth"), "server", "run", "--state-dir", str(self.sl.state_dir)], stderr=err,
                    stdout=subprocess.DEVNULL,
                )
            time.sleep(startup_kill_after)
            self._reap_server()
            self.fig.server_startup_kills += 1
            self.sample_counters()
        self.sl.start_server()

    # --- stealth-connect ---------------------------------------------------------------------------
    def connect_pids(self, name: str) -> list[int]:
        """stealth-connect processes of client `name` (its state dir is unique to this lab)."""
        from scripts.lib.netlab import run

        cdir = str(self.sl.client_dirs[name])
        pids = []
        for pid in run(["ip", "netns", "pids", self.sl.cli.ns], check=False).stdout.split():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(a.endswith("stealth-connect") for a in args) and cdir in args:
                pids.append(int(pid))
        return pids

    def kill_connect(self, name: str) -> None:
        hit = False
        for pid in self.connect_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                hit = True
        if hit:
            self.fig.connect_kills += 1
        else:
            self.fig.connect_kill_misses += 1

    # --- the long session that must survive server kills -----------------------------------------
    def rotate_session(self) -> None:
        s = self.session
        if s is not None:
            if s.proc.poll() is None:
                return
            out, err = s.proc.communicate(timeout=10)
            self.sessions_done.append((s.proc.returncode or 0, out, err, s.kills_seen))
        cmd = f"echo started; sleep {SESSION_SECONDS}; echo ok"
        proc = self.sl.cli.popen(self.sl.ssh_argv("bob", self.sl.srv.ip4, command=cmd, connect_timeout=15),
                                 stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "started", f"seed {self.seed}: session login failed: {line!r}"
        self.session = Session(proc)
        self.fig.sessions += 1

    def finish_session(self) -> None:
        s = self.session
        if s is None:
            return
        out, err = s.proc.communicate(timeout=SESSION_SECONDS + 30)
        self.sessions_done.append((s.proc.returncode or 0, out, err, s.kills_seen))
        self.session = None

    # --- state -------------------------------------------------------------------------------------
    def sample_counters(self) -> None:
        """The server's stored counters (enrollment id -> counter), plus each client's last used one."""
        from stealth_connect.profiles import read_counter

        from stealth.server_state import ServerState

        sample: dict[str, int] = dict(ServerState(self.sl.state_dir).load_counters())  # snapshot + journal
        for name, cdir in self.sl.client_dirs.items():
            for f in (cdir / "counters").glob("*.ctr"):
                sample[f"client {name}"] = read_counter(f).last_used
        self.samples.append(sample)

    # --- the loop ----------------------------------------------------------------------------------
    def round(self, i: int) -> None:
        from scripts.lib.stealthlab import tool

        rng = self.rng  # every draw is made every round, so the schedule depends on the seed alone
        action = rng.choices(("none", "server", "connect"), weights=(60, 20, 20))[0]
        delay = rng.uniform(0.0, 0.6)
        outage = rng.uniform(2.0, 3.5) if rng.random() < 0.08 else rng.uniform(0.0, 0.8)
        startup_kill = rng.uniform(0.0, 0.25) if rng.random() < 0.25 else None
        kill_first = rng.random() < 0.5  # the knock then meets a dead server (fail closed, lost counters)
        self.rotate_session()
        argv = self.sl.ssh_argv("alice", self.sl.srv.ip4, command="true", connect_timeout=15)
        proxy = next(j for j, a in enumerate(argv) if a.startswith("ProxyCommand="))
        argv[proxy] = argv[proxy].replace(
            tool("stealth-connect"), f"{tool('stealth-connect')} --timeout {KNOCK_TIMEOUT}", 1)
        start = 0.0
        if action == "server" and kill_first:
            start = self.kill_server()
        ssh = self.sl.cli.popen(argv, stdin=subprocess.DEVNULL)
        if action == "server":
            if not kill_first:
                time.sleep(delay)
                start = self.kill_server()
            time.sleep(outage)
            self.down.append((start, time.time()))  # nothing new may be answered before the restart
            self.start_server(startup_kill)
        elif action == "connect":
            time.sleep(delay / 2)  # stealth-connect lives ~0.3 s: aim inside its life
            self.kill_connect("alice")
        try:
            _, err = ssh.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(ssh.pid, signal.SIGKILL)
            _, err = ssh.communicate()
        self.fig.rounds += 1
        if ssh.returncode == 0:
            self.fig.logins_ok += 1
        else:
            self.fig.logins_failed += 1
            if action != "connect":
                self.fig.failed_rounds_without_connect_kill.append(i)
                self.log(f"round {i} ({action}) failed: {err.strip()[-300:]}")
        self.sample_counters()

    def run(self) -> None:
        t0 = time.monotonic()
        for i in range(self.rounds):
            self.round(i)
        self.finish_session()
        self.fig.elapsed_s = round(time.monotonic() - t0, 1)


# --- evidence ------------------------------------------------------------------------------------------
def parse_accepts(logs: list[str]) -> list[Accept]:
    out = []
    for run_index, text in enumerate(logs):
        for line in text.splitlines():
            m = ACCEPT_RE.search(line)
            if m:
                out.append(Accept(run_index, m["client"], int(m["sport"]), m["src"], int(m["counter"]),
                                  m["recovery"] is not None))
    return out


def log_problems(accepts: list[Accept]) -> list[str]:
    """Each counter accepted at most once, in increasing order across all runs (a recovery accept logs
    the new base it moved the client to, which must also lie above everything accepted before)."""
    problems = []
    last: dict[str, int] = {}
    seen: dict[tuple[str, int], Accept] = {}
    for a in accepts:
        key = (a.client, a.counter)
        if key in seen:
            problems.append(f"counter accepted twice: {seen[key]} and {a}")
        elif a.counter <= last.get(a.client, 0):
            problems.append(f"counter accepted after a higher one: {a} (last {last[a.client]})")
        seen[key] = a
        last[a.client] = max(last.get(a.client, 0), a.counter)
    return problems


def sample_problems(samples: list[dict[str, int]]) -> list[str]:
    problems = []
    for before, after in itertools.pairwise(samples):
        for k, v in before.items():
            if k not in after:
                problems.append(f"{k} vanished from the counter files")
            elif after[k] < v:
                problems.append(f"counter of {k} went back: {v} -> {after[k]}")
    return problems


@dataclass
class Tokens:
    """Wire image (ISN, source port) of every counter a client used, and back."""

    by_wire: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)
    last_used: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, sl: Any, names: list[str]) -> "Tokens":
        from stealth_connect.profiles import ClientStore, load_profile, read_counter

        from stealth.core.token import derive

        t = cls()
        for name in names:
            cdir = sl.client_dirs[name]
            prof = load_profile(cdir / "hosts" / f"{sl.srv.ip4}.toml")
            used = read_counter(ClientStore(cdir).counter_path(prof)).last_used
            t.last_used[name] = used
            for c in range(1, used + 1):
                k = derive(prof.key, prof.binding, SSH_PORT, c)
                assert k.sport is not None
                t.by_wire[(k.isn, k.sport)] = (name, c)
        return t


def capture_problems(packets: list[Any], srv: str, down: list[tuple[float, float]], tokens: Tokens,
                     logged: set[tuple[str, int]]) -> tuple[list[str], set[tuple[str, int]]]:
    """No two SYN-ACKs answer one ISN for different 4-tuples (or as two connections); every answered
    SYN carried a token the log shows accepted; nothing new is answered while the server is down."""
    problems = []
    tuples: dict[int, set[tuple[str, int, int]]] = {}
    server_isns: dict[int, set[int]] = {}
    first_answer: dict[int, float] = {}
    answered: set[tuple[str, int]] = set()
    for p in packets:
        ip, tcp = p.getlayer("IP"), p.getlayer("TCP")
        if ip is None or tcp is None or ip.src != srv or tcp.sport != SSH_PORT or tcp.flags != "SA":
            continue
        isn = (tcp.ack - 1) & 0xFFFFFFFF
        at = float(p.time)
        for start, end in down:
            if start + 0.005 < at < end - 0.005 and first_answer.get(isn, at) >= start:
                problems.append(f"SYN-ACK at {at:.3f} for a new SYN (ISN {isn}) while the server was down "
                                f"({start:.3f}..{end:.3f})")
        first_answer.setdefault(isn, at)
        tuples.setdefault(isn, set()).add((ip.dst, tcp.dport, tcp.sport))
        server_isns.setdefault(isn, set()).add(tcp.seq)
        token = tokens.by_wire.get((isn, tcp.dport))
        if token is None:
            problems.append(f"SYN-ACK for a SYN that carried no token of ours: ISN {isn} port {tcp.dport}")
            continue
        answered.add(token)
        if token not in logged:
            problems.append(f"{token} got in (SYN-ACK) but the server never logged accepting it")
    for isn, ts in tuples.items():
        if len(ts) > 1:
            problems.append(f"ISN {isn} answered for {len(ts)} different 4-tuples: {sorted(ts)}")
        if len(server_isns[isn]) > 1:
            problems.append(f"ISN {isn} answered as {len(server_isns[isn])} different connections")
    return problems, answered


def lost_runs(used: int, spent: set[int]) -> tuple[int, int]:
    """(longest run of used counters the server never accepted, the run at the end)."""
    longest = run = 0
    for c in range(1, used + 1):
        run = 0 if c in spent else run + 1
        longest = max(longest, run)
    return longest, run


def knock_argv(sl: Any, name: str, timeout: str) -> list[str]:
    from scripts.lib.stealthlab import tool

    return [tool("stealth-connect"), "--state-dir", str(sl.client_dirs[name]), "--timeout", timeout,
            sl.srv.ip4, str(SSH_PORT)]


def knock(sl: Any, name: str, timeout: str) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = sl.cli.run(knock_argv(sl, name, timeout), check=False,
                                                          stdin=subprocess.DEVNULL, timeout=60)
    return result


def recovery_phase(sl: Any, loop: Loop, names: list[str]) -> list[str]:
    """Each client is pushed far past the window (as if W+4 knocks had been lost), then knocks, with the
    server killed at a seeded random moment around its recovery knocks and restarted. Nothing may be
    accepted twice (the log check covers these accepts too), and it must get back in by itself."""
    from stealth_connect.counter import take_counter
    from stealth_connect.profiles import ClientStore, load_profile

    problems = []
    for name in names:
        store = ClientStore(sl.client_dirs[name])
        path = store.counter_path(load_profile(store.find(sl.srv.ip4)))
        for _ in range(W + 4):
            take_counter(path)
        for r in range(3):
            kill = r == 0 or loop.rng.random() < 0.5
            delay, outage = loop.rng.uniform(0.0, 0.15), loop.rng.uniform(0.2, 1.0)
            proc = sl.cli.popen(knock_argv(sl, name, KNOCK_TIMEOUT), stdin=subprocess.DEVNULL)
            if kill:
                time.sleep(delay)
                start = loop.kill_server()
                time.sleep(outage)
                loop.down.append((start, time.time()))
                loop.start_server(None)
                loop.fig.recovery_server_kills += 1
            _, err = proc.communicate(timeout=60)
            loop.fig.recovery_rounds += 1
            if proc.returncode != 0 and not kill:
                problems.append(f"{name}: recovery round {r} (no kill) failed: {err.strip()}")
        final = knock(sl, name, timeout="3")
        if final.returncode != 0:
            problems.append(f"{name} did not get back in after recovery: {final.stderr.strip()}")
        loop.sample_counters()
    return problems


@dataclass
class Outcome:
    fig: Figures
    problems: list[str]


def kill_loop(sl: Any, rounds: int, seed: int, log: Any = print) -> Outcome:
    from stealth.server_state import ServerState

    loop = Loop(sl, seed, rounds, log)
    problems: list[str] = []
    log(f"kill loop: seed={seed} rounds={rounds} (STEALTH_KILLLOOP_SEED={seed} reproduces the schedule)")
    with sl.srv.capture(SYN_BPF) as cap:
        loop.run()
    fig = loop.fig

    # the sessions opened before server kills all survived them
    for rc, out, err, kills in loop.sessions_done:
        if rc != 0 or out.split() != ["ok"]:  # "started" was read when it opened
            problems.append(f"session that saw {kills} server kills failed: rc={rc} {out!r} {err.strip()!r}")
    if fig.server_kills_during_open_sessions == 0:
        problems.append("no server kill happened while a session was open")

    logs_at_loop_end = [*sl.server_log, sl.server_log_path.read_text()]
    logged_in_loop = {(a.client, a.counter) for a in parse_accepts(logs_at_loop_end)}
    state = ServerState(sl.state_dir)
    enrollment = {n: e.enrollment for n, e in state.load_clients().items()}
    used_in_loop = Tokens.of(sl, sorted(enrollment)).last_used

    def lost_tail(name: str) -> int:
        """Counters `name` used since the server last accepted one (log or counters.json)."""
        logs = [*sl.server_log, sl.server_log_path.read_text()]
        spent = {a.counter for a in parse_accepts(logs) if a.client == name}
        spent.add(state.load_counters().get(enrollment[name], 0))
        return lost_runs(Tokens.of(sl, [name]).last_used[name], spent)[1]

    # while the server is down, knocks reach it and get no reply, and cost one counter in all: every
    # run sends the same pending knock again
    loop.kill_server()
    with sl.srv.capture(SYN_BPF) as down_cap:
        downs = [knock(sl, "alice", timeout="0.3") for _ in range(5)]
    sl.start_server()
    from scripts.lib.stealthlab import replies, syns

    down_packets = down_cap.packets()
    fig.knocks_while_down = len(downs)
    for down in downs:
        if down.returncode == 0 or "no answer" not in down.stderr:
            problems.append(f"knock while the server was down: rc={down.returncode} {down.stderr.strip()!r}")
    down_tokens = {(p["TCP"].seq, p["TCP"].sport) for p in syns(down_packets, sl.srv.ip4, SSH_PORT)}
    if len(down_tokens) != 1:
        problems.append(f"{len(downs)} runs while the server was down sent {len(down_tokens)} tokens, not 1")
    if replies(down_packets, sl.srv.ip4):
        problems.append("a knock got a reply while the server was down")

    # no client is locked out: the very next plain knock passes
    loop.sample_counters()
    for name in sorted(enrollment):
        fig.lost_before_final_knock[name] = lost_tail(name)
        final = knock(sl, name, timeout="3")
        if final.returncode != 0:
            problems.append(f"{name} locked out after the loop: {final.stderr.strip()}")
    loop.sample_counters()
    tokens = Tokens.of(sl, sorted(enrollment))  # before recovery moves the counters far ahead

    problems += recovery_phase(sl, loop, sorted(enrollment))
    sl.stop_server()  # SIGTERM: its log joins the others

    # evidence 1: the server's log
    accepts = parse_accepts(sl.server_log)
    problems += log_problems(accepts)
    logged = {(a.client, a.counter) for a in accepts}
    fig.server_runs = len(sl.server_log)
    fig.accepts = len(accepts)
    fig.recovery_accepts = sum(a.recovery for a in accepts)
    if fig.recovery_accepts < len(enrollment):
        problems.append(f"only {fig.recovery_accepts} recovery accepts for {len(enrollment)} clients")

    # evidence 2: counters.json only moves forward, and holds only counters the server accepted
    problems += sample_problems(loop.samples)
    fig.counter_samples = len(loop.samples)
    names = {v: k for k, v in enrollment.items()}
    unlogged = {(names[k], v) for s in loop.samples for k, v in s.items() if k in names} - logged
    fig.persisted_but_unlogged = len(unlogged)
    if len(unlogged) > fig.server_kills + fig.server_startup_kills:
        problems.append(f"counters.json holds counters the log never accepted: {sorted(unlogged)}")

    # evidence 3: what the server's wire saw during the loop
    cap_problems, answered = capture_problems(cap.packets(), sl.srv.ip4, loop.down, tokens, logged)
    problems += cap_problems
    fig.syn_acked_tokens = len(answered)
    fig.accepted_but_unanswered = len(logged_in_loop - answered)
    if fig.accepted_but_unanswered > fig.server_kills:  # only a kill between accept and verdict
        problems.append(f"accepted but never answered: {sorted(logged_in_loop - answered)}")
    fig.down_windows = len(loop.down)
    for name in sorted(enrollment):
        spent_now = {c for n, c in logged if n == name} | {c for n, c in unlogged if n == name}
        fig.counters_used[name] = tokens.last_used[name]
        fig.max_consecutive_lost[name] = lost_runs(tokens.last_used[name], spent_now)[0]
        in_loop = {c for c in spent_now if c <= used_in_loop[name]}
        fig.counters_lost_in_loop[name] = used_in_loop[name] - len(in_loop)
        fig.max_consecutive_lost_in_loop[name] = lost_runs(used_in_loop[name], in_loop)[0]

    if fig.failed_rounds_without_connect_kill:
        problems.append(f"logins failed in rounds with no stealth-connect kill: "
                        f"{fig.failed_rounds_without_connect_kill}")
    log("kill loop figures: " + json.dumps(asdict(fig), sort_keys=True))
    return Outcome(fig, problems)


@contextlib.contextmanager
def killloop_lab() -> Iterator[Any]:
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="killloop", clients=("alice", "bob")) as sl:
        yield sl


def seed_from_env() -> int:
    env = os.environ.get("STEALTH_KILLLOOP_SEED")
    return int(env) if env else random.SystemRandom().randrange(1 << 32)


def test_kill_loop_never_reuses_a_counter_nor_locks_out(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import require_privileges

    require_privileges()
    seed = seed_from_env()

    def say(msg: str) -> None:
        with capsys.disabled():
            print(msg, flush=True)

    with killloop_lab() as sl:
        outcome = kill_loop(sl, ROUNDS, seed, log=say)
    fig = outcome.fig
    assert not outcome.problems, f"seed {seed}: " + "\n".join(outcome.problems)
    enough = ROUNDS // 10  # about a quarter of the rounds draw each kind of kill
    assert fig.rounds >= ROUNDS and fig.server_kills >= enough and fig.connect_kills >= enough, asdict(fig)
    assert fig.accepts >= fig.logins_ok, asdict(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description="kill -9 loop against stealth server and stealth-connect")
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/killloop.json"))
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else seed_from_env()
    with killloop_lab() as sl:
        outcome = kill_loop(sl, args.rounds, seed)
    doc = {
        "command": " ".join(["scripts/killloop", *sys.argv[1:]]),
        "machine": {"kernel": platform.release(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "what": "ssh root@server true through stealth-connect, each round; kill -9 of the server's process "
                "group (some during start-up) and of stealth-connect at seeded random moments; a second "
                "client keeps an ssh session open across server kills",
        "figures": asdict(outcome.fig),
        "problems": outcome.problems,
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.exit(main())
