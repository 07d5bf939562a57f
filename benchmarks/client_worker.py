# Why: the client figures of issue 10 are timed inside the client namespace, where ssh and
# stealth-connect run (`ip netns exec` would add its own start-up to every sample). This worker spawns
# the client venv's stealth-connect the way ssh does (a socketpair as stdout with --fdpass, two pipes as
# stdin/stdout without), moves bulk data through it as ssh would read and write it, and times ssh logins;
# it prints its raw figures as one JSON document. Child processes get no PYTHONPATH, so the install under
# test is the one they import.
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import cpu_busy, cpu_times, time_cases
from benchmarks.latency_worker import recv_fd

IO_BYTES = 1 << 18  # what one read or write moves: ssh reads up to 256 KiB (PACKET_MAX_SIZE) at a time
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def spawn_fdpass(argv: list[str], env: dict[str, str] | None = None, stderr: int | None = None
                 ) -> tuple[socket.socket, "subprocess.Popen[bytes]"]:
    """Run `argv` (stealth-connect --fdpass ...) with a socketpair as stdout, as ssh does with
    ProxyUseFdpass: the socket it passes, as soon as it arrives, and the process (still to be reaped)."""
    ours, theirs = socket.socketpair()
    with ours:
        proc = subprocess.Popen(argv, stdout=theirs.fileno(), stdin=subprocess.DEVNULL, stderr=stderr,
                                env=env or CLEAN_ENV)
        theirs.close()
        try:
            return socket.socket(fileno=recv_fd(ours)), proc
        except BaseException:
            proc.wait()
            raise


def start_to_fd(cfg: dict[str, Any]) -> dict[str, Any]:
    """Process start to the connected fd in hand, for the client venv's stealth-connect and (context)
    the dev venv's; beside them the client venv's bare interpreter start and connect() in this process."""
    from stealth_connect.connect import connect
    from stealth_connect.profiles import ClientStore

    tail = ["--state-dir", cfg["client_dir"], "--fdpass", cfg["srv"], str(cfg["port"])]
    store = ClientStore(Path(cfg["client_dir"]))
    exiting: list[subprocess.Popen[bytes]] = []  # the clock stops at the fd: their exits are not timed

    def fdpass(exe: str, env: dict[str, str] | None = None) -> Callable[[], None]:
        def one() -> None:
            sock, proc = spawn_fdpass([exe, *tail], env)
            sock.close()
            exiting.append(proc)
        return one

    cases = {
        "client_venv": fdpass(cfg["stealth_connect"]),
        "dev_venv": fdpass(cfg["dev_stealth_connect"], dict(os.environ)),
        "python_start": lambda: subprocess.run([cfg["python"], "-c", "pass"], check=True, env=CLEAN_ENV),
        "connect_in_process": lambda: connect(cfg["srv"], cfg["port"], store=store, timeout=5)[0].close(),
    }
    times, errors = time_cases(cases, cfg["samples"])
    failed = sum(1 for proc in exiting if proc.wait())
    return {"times": times, "errors": errors, "failed_exits": failed, "importtime": importtime(cfg, tail)}


def importtime(cfg: dict[str, Any], tail: list[str]) -> str:
    """`-X importtime` of one knock by the client venv's stealth-connect (its stderr)."""
    env = {**CLEAN_ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    sock, proc = spawn_fdpass([cfg["stealth_connect"], *tail], env, stderr=subprocess.PIPE)
    sock.close()
    return proc.communicate(timeout=30)[1].decode(errors="replace")


@dataclass(frozen=True)
class Conn:
    """One connection to the bulk service as ssh would hold it: the fds it reads and writes (a socket,
    or stealth-connect's stdout and stdin pipes) and the relaying process, if any."""

    rfd: int
    wfd: int
    proc: "subprocess.Popen[bytes] | None" = None
    sock: socket.socket | None = None

    def close(self) -> float:
        """Close it; the relaying process's CPU seconds (0 without one)."""
        if self.sock is not None:
            self.sock.close()
        if self.proc is None:
            return 0.0
        os.close(self.wfd)
        before = _children_cpu()
        self.proc.wait(timeout=60)
        os.close(self.rfd)
        return _children_cpu() - before


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def open_conn(mode: str, cfg: dict[str, Any]) -> Conn:
    """direct: a plain connect to the unprotected port; fdpass and relay: stealth-connect to the
    protected one, the socket passed, or the bytes relayed through its stdin and stdout."""
    if mode == "direct":
        s = socket.create_connection((cfg["srv"], cfg["direct_port"]), timeout=10)
        s.settimeout(None)
        return Conn(s.fileno(), s.fileno(), sock=s)
    argv = [cfg["stealth_connect"], "--state-dir", cfg["client_dir"], cfg["srv"], str(cfg["port"])]
    if mode == "fdpass":
        s, proc = spawn_fdpass([*argv[:1], "--fdpass", *argv[1:]])
        if proc.wait():
            raise RuntimeError(f"stealth-connect --fdpass exited {proc.returncode}")
        return Conn(s.fileno(), s.fileno(), sock=s)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=CLEAN_ENV)
    assert proc.stdin is not None and proc.stdout is not None
    return Conn(os.dup(proc.stdout.fileno()), os.dup(proc.stdin.fileno()), proc=_detach(proc))


def _detach(proc: "subprocess.Popen[bytes]") -> "subprocess.Popen[bytes]":
    """Drop the Popen's own file objects for the pipes (the Conn holds duplicates it closes itself)."""
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            f.close()
    proc.stdin = proc.stdout = None
    return proc


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:IO_BYTES]) :]


def _read_all(fd: int, buf: bytearray) -> tuple[int, bytes]:
    """Read until end of file: the byte count, and the first bytes (up to 64)."""
    got, head = 0, b""
    while n := os.readv(fd, [buf]):
        if len(head) < 64:
            head += bytes(buf[: 64 - len(head)])[:n]
        got += n
    return got, head


def transfer(c: Conn, direction: str, nbytes: int, buf: bytearray) -> float:
    """Seconds from the request to the last byte: "down" reads `nbytes` the service sends, "up" writes
    `nbytes` and reads the service's count. The clock starts once the service greeted ("+")."""
    if os.read(c.rfd, 1) != b"+":
        raise RuntimeError("no greeting from the bulk service")
    t = time.perf_counter()
    _write_all(c.wfd, f"{direction[0].upper()}{nbytes:015d}".encode())
    if direction == "up":
        zeros = memoryview(bytes(IO_BYTES))
        left = nbytes
        while left:
            left -= os.write(c.wfd, zeros[: min(left, IO_BYTES)])
    got, head = _read_all(c.rfd, buf)
    seconds = time.perf_counter() - t
    want = nbytes if direction == "down" else len(f"{nbytes}\n")
    if got != want or (direction == "up" and head != f"{nbytes}\n".encode()):
        raise RuntimeError(f"{direction}: got {got} bytes ({head[:20]!r}), wanted {want}")
    return seconds


def bulk(cfg: dict[str, Any]) -> dict[str, Any]:
    """`rounds` transfers of `bytes` each way, alternating the modes within each round."""
    buf = bytearray(IO_BYTES)
    runs: dict[str, list[dict[str, Any]]] = {}
    errors: dict[str, list[str]] = {}
    for _ in range(cfg["rounds"]):
        for direction in cfg.get("directions", ("down", "up")):
            for mode in ("direct", "fdpass", "relay"):
                key = f"{direction}_{mode}"
                try:
                    c = open_conn(mode, cfg)
                    c0 = cpu_times()
                    seconds = transfer(c, direction, cfg["bytes"], buf)
                    busy = cpu_busy(c0, cpu_times())
                    proc_cpu = c.close()
                except Exception as e:  # noqa: BLE001 -- a failed run is counted and reported
                    errors.setdefault(key, []).append(repr(e)[:300])
                    continue
                runs.setdefault(key, []).append({"seconds": seconds, "cpu_busy_pct_per_core": busy,
                                                 "stealth_connect_cpu_seconds": round(proc_cpu, 3)})
    return {"runs": runs, "errors": errors}


def logins(cfg: dict[str, Any]) -> dict[str, Any]:
    """`ssh ... true`, each mode's argv in turn, `samples` times."""
    def login(argv: list[str]) -> Callable[[], None]:
        def one() -> None:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=CLEAN_ENV,
                               timeout=60, check=False)
            if r.returncode:
                raise RuntimeError(f"rc={r.returncode}: {r.stderr.strip()[-200:]}")
        return one

    times, errors = time_cases({m: login(a) for m, a in cfg["argvs"].items()}, cfg["samples"])
    return {"times": times, "errors": errors, "proxycommand_fds": proxy_fds(cfg["fds_argv"])}


def proxy_fds(argv: list[str]) -> dict[str, str]:
    """What ssh gives its ProxyCommand as stdin and stdout: /proc/PID/fd/{0,1} of the stealth-connect
    it runs, during one session (`argv` runs `sleep 1` through the relay)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=CLEAN_ENV)
    seen: dict[str, str] = {}
    end = time.monotonic() + 10
    while not seen and proc.poll() is None and time.monotonic() < end:
        with contextlib.suppress(OSError):  # ssh or its child gone meanwhile
            for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                if b"stealth-connect" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    seen = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in ("0", "1")}
        time.sleep(0.005)
    proc.wait(timeout=30)
    return {fd: what.split(":")[0] for fd, what in seen.items()}


def main() -> int:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    modes = {"start": start_to_fd, "bulk": bulk, "logins": logins}
    print(json.dumps(modes[cfg["mode"]](cfg)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
