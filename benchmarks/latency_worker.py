# Why: runs inside the client namespace (issue 4 §2) and times, alternating, the time from "start
# knocking" to "connect() returned" for a plain connect, stealth's connect() in-process, a
# `stealth-connect --fdpass` process, fwknop (`fwknop -A tcp/PORT`, then connect) and knockd (a 3-port
# `knock`, then connect). For fwknop and knockd the connect is retried every RETRY_S until the rule is
# in; their rules are flushed between samples (outside the timing) so each sample needs its own knock.
import array
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RETRY_S = 0.005
# claim: the durable counter write; tuple_in_use: the check that no local socket holds the knock's tuple
CLIENT_PHASES = ("claim", "tuple_in_use", "knock_socket", "record_success")


def time_phases(module: Any, acc: dict[str, float], names: tuple[str, ...] = CLIENT_PHASES) -> list[str]:
    """Wrap the client steps connect() calls (looked up in its module at call time) so each in-process
    sample also says how long it spent in them; the rest of a sample is the SYN -> SYN-ACK round trip
    through the server plus the profile lookup and token derivation (tens of microseconds). Returns the
    names wrapped (a step the module no longer has is left out)."""
    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[name] += time.perf_counter() - t
        return timed

    wrapped = [name for name in names if callable(getattr(module, name, None))]
    for name in wrapped:
        setattr(module, name, wrap(name, getattr(module, name)))
    return wrapped


def connect_until_open(addr: tuple[str, int], deadline: float) -> int:
    tries = 0
    while time.monotonic() < deadline:
        tries += 1
        s = socket.socket()
        s.settimeout(RETRY_S)
        try:
            s.connect(addr)
            s.close()
            return tries
        except OSError:
            s.close()
    raise TimeoutError(f"{addr} never opened")


def recv_fd(sock: socket.socket) -> int:
    fds = array.array("i")
    _, anc, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: fds.itemsize])
            return fds[0]
    raise RuntimeError("no fd passed")


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    from stealth_connect.connect import connect
    from stealth_connect.profiles import ClientStore

    srv = cfg["srv"]
    store = ClientStore(Path(cfg["client_dir"]))
    flush = cfg["flush_prefix"]

    def plain() -> None:
        socket.create_connection((srv, cfg["port_plain"]), timeout=2).close()

    acc = dict.fromkeys(CLIENT_PHASES, 0.0)
    timed = time_phases(sys.modules["stealth_connect.connect"], acc)
    phases: dict[str, list[float]] = {name: [] for name in timed}

    def stealth_inproc() -> None:
        acc.update(dict.fromkeys(timed, 0.0))
        sock, _ = connect(srv, cfg["port_stealth"], store=store, timeout=2)
        sock.close()
        for name in timed:
            phases[name].append(acc[name])

    def stealth_process() -> None:
        a, b = socket.socketpair()
        proc = subprocess.Popen([cfg["stealth_connect"], "--state-dir", cfg["client_dir"], "--fdpass", srv,
                                 str(cfg["port_stealth"])], stdout=b.fileno(), stdin=subprocess.DEVNULL)
        b.close()
        fd = recv_fd(a)
        socket.socket(fileno=fd).close()
        a.close()
        proc.wait()

    def fwknop() -> None:
        subprocess.run(["fwknop", "--rc-file", cfg["fwknop_rc"], "-n", "bench", "-A",
                        f"tcp/{cfg['port_fwknop']}", "--no-save-args"], check=True, capture_output=True)
        connect_until_open((srv, cfg["port_fwknop"]), time.monotonic() + 5)

    def knockd() -> None:
        subprocess.run(["knock", srv, *map(str, cfg["sequence"])], check=True, capture_output=True)
        connect_until_open((srv, cfg["port_knockd"]), time.monotonic() + 5)

    cases = {"plain_connect": plain, "stealth_connect_in_process": stealth_inproc,
             "stealth_connect_process": stealth_process, "fwknop": fwknop, "knockd": knockd}
    cleanup = {"fwknop": [*flush, "iptables", "-F", "FWKNOP_INPUT"],
               "knockd": [*flush, "iptables", "-F", "KNOCKD"]}
    times: dict[str, list[float]] = {k: [] for k in cases}
    errors: dict[str, list[str]] = {k: [] for k in cases}
    for _ in range(cfg["samples"]):
        for name, fn in cases.items():
            t = time.perf_counter()
            try:
                fn()
                times[name].append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 -- a failed sample is counted and reported, not fatal
                errors[name].append(repr(e)[:200])
            if name in cleanup:
                subprocess.run(cleanup[name], check=False, capture_output=True)
    print(json.dumps({"times": times, "errors": errors, "in_process_phases": phases}))


if __name__ == "__main__":
    main()
