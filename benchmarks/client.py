# Why: issue 10's client figures, in namespaces of their own (stealthlab: a real `stealth server run`
# protecting sshd on 22 and a bulk service on 5022, both on loopback, beside the same sshd on the
# unprotected port 2222 and the same service on the unprotected 5000). Measured with a non-editable
# install (benchmarks/client_venv.py): `stealth-connect --fdpass` from process start to the connected fd
# (with -X importtime's top offenders, so a slow import shows); bulk transfer through the ProxyCommand
# relay vs --fdpass vs a direct connection; and `ssh ... true` through both against direct ssh. The
# timing runs in the client namespace (benchmarks/client_worker.py); this side sets up and summarises.
import json
import shlex
import statistics
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.client_venv import client_venv
from benchmarks.common import summary_ms
from benchmarks.lab import check_no_route_out, env_for_tools
from scripts.lib.stealthlab import StealthLab, stealth_lab, tool

PORTS = "22,5022"
BULK_PORT, DIRECT_BULK_PORT, DIRECT_SSH_PORT = 5022, 5000, 2222
BLOB_BYTES = 64 << 20  # the file the service sends from (sendfile, over and over)
MODES = ("direct", "fdpass", "relay")

# the bulk service: greets with "+", then reads a 16-byte request: "D" + 15 digits (send that many bytes,
# then close) or "U" + 15 digits (read that many, answer the count and a newline, then close)
SERVICE = """
import os, socket, sys, threading
blob = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(blob).st_size
def serve(c):
    with c:
        c.sendall(b"+")
        req = c.recv(16, socket.MSG_WAITALL)
        n = int(req[1:])
        if req[:1] == b"D":
            sent = 0
            while sent < n:
                sent += os.sendfile(c.fileno(), blob, sent % size, min(n - sent, size - sent % size))
        else:
            buf, got = bytearray(1 << 20), 0
            while got < n and (k := c.recv_into(buf)):
                got += k
            c.sendall(b"%d\\n" % got)
def accept(s):
    while True:
        threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()
for a in sys.argv[2:]:
    host, _, port = a.rpartition(":")
    threading.Thread(target=accept, args=(socket.create_server((host, int(port)), backlog=64),),
                     daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""


def _start_service(sl: StealthLab) -> None:
    blob = sl.lab.tmp / "blob"
    with open(blob, "wb") as f:
        f.truncate(BLOB_BYTES)  # zeros; sendfile reads them from the page cache
    proc = sl.srv.popen([sys.executable, "-c", SERVICE, str(blob), f"127.0.0.1:{BULK_PORT}",
                         f"0.0.0.0:{DIRECT_BULK_PORT}"])
    assert proc.stdout is not None
    if "listening" not in proc.stdout.readline():
        raise RuntimeError(f"bulk service: {proc.communicate(timeout=5)[1]}")


def _worker(sl: StealthLab, cfg: dict[str, Any], timeout: float) -> tuple[dict[str, Any], str]:
    """Run the worker in the client namespace: its figures, and the command for the record."""
    cfg = {"srv": sl.srv.ip4, "client_dir": str(sl.client_dirs["alice"]), **cfg}
    argv = sl.cli.argv([sys.executable, "-m", "benchmarks.client_worker", json.dumps(cfg)])
    r = subprocess.run(argv, capture_output=True, text=True, check=False, env=env_for_tools(),
                       timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"client worker {cfg['mode']} failed: {r.stderr[-2000:]}")
    shown = {k: v for k, v in cfg.items() if k not in ("argvs", "fds_argv")}
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc, f"ip netns exec CLI python -m benchmarks.client_worker '{json.dumps(shown)}'"


def _summaries(doc: dict[str, Any]) -> dict[str, Any]:
    """The worker's samples by case (seconds) as millisecond percentiles, with its failures."""
    errors = doc["errors"]
    return {name: {**summary_ms(values), "failed": len(errors[name]), "errors": errors[name][:3]}
            for name, values in doc["times"].items()}


def _import_offenders(text: str, top: int = 15) -> dict[str, Any]:
    """-X importtime's lines: the `top` slowest by own time, and the whole import time."""
    rows = []
    for line in text.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, cum, name = (p.strip() for p in line[len("import time:"):].split("|", 2))
            rows.append((int(own), int(cum), name))
    rows.sort(reverse=True)
    return {"total_self_ms": round(sum(r[0] for r in rows) / 1000, 2), "modules": len(rows),
            "top_by_self": [f"{own / 1000:7.2f} ms self {cum / 1000:7.2f} ms cumulative  {name}"
                            for own, cum, name in rows[:top]]}


def start(sl: StealthLab, venv: dict[str, Any], samples: int) -> dict[str, Any]:
    cfg = {"mode": "start", "port": BULK_PORT, "samples": samples, "stealth_connect": venv["stealth_connect"],
           "python": venv["python"], "dev_stealth_connect": tool("stealth-connect")}
    doc, command = _worker(sl, cfg, timeout=samples * 10 + 60)
    out: dict[str, Any] = {"command": command, **_summaries(doc), "failed_exits": doc["failed_exits"]}
    out["importtime"] = _import_offenders(doc["importtime"])
    out["what"] = {
        "client_venv": "spawn the client venv's `stealth-connect --fdpass HOST 5022` with one end of a "
                       "socketpair as stdout (as ssh does with ProxyUseFdpass), until recvmsg() has the fd "
                       "(its exit is not timed: reaped after all samples; failed_exits counts non-zero ones)",
        "dev_venv": "the same with the dev venv's (editable) stealth-connect, for context",
        "python_start": "the client venv's `python -c pass`: the interpreter's own start and exit",
        "connect_in_process": "stealth_connect.connect() in the worker (profile cached): the knock itself",
    }
    return out


def bulk(sl: StealthLab, venv: dict[str, Any], nbytes: int, rounds: int,
         directions: tuple[str, ...] = ("down", "up")) -> dict[str, Any]:
    cfg = {"mode": "bulk", "port": BULK_PORT, "direct_port": DIRECT_BULK_PORT, "bytes": nbytes,
           "rounds": rounds, "stealth_connect": venv["stealth_connect"], "directions": directions}
    doc, command = _worker(sl, cfg, timeout=rounds * 6 * (nbytes / 50e6 + 5) + 60)
    out: dict[str, Any] = {"command": command, "bytes": nbytes, "rounds": rounds,
                           "unit": "MB/s = 10^6 bytes per second"}
    for key, runs in doc["runs"].items():
        rates = [nbytes / r["seconds"] / 1e6 for r in runs]
        out[key] = {"median_mb_per_s": round(statistics.median(rates), 1),
                    "mb_per_s": [round(x, 1) for x in rates],
                    "cpu_busy_pct_per_core": [r["cpu_busy_pct_per_core"] for r in runs],
                    "stealth_connect_cpu_seconds": [r["stealth_connect_cpu_seconds"] for r in runs]}
    for key, errs in doc["errors"].items():
        out.setdefault(key, {}).update({"failed": len(errs), "errors": errs[:3]})
    for d in ("down", "up"):
        relay, fdpass = (out.get(f"{d}_{m}", {}).get("mb_per_s") or [] for m in ("relay", "fdpass"))
        if relay and fdpass:
            out[f"{d}_ratio_relay_to_fdpass"] = round(statistics.median(relay) / statistics.median(fdpass), 3)
        if len(relay) == len(fdpass) == rounds:  # each round against the same round's --fdpass transfer
            paired = [r / f for r, f in zip(relay, fdpass, strict=True)]
            out[f"{d}_paired_ratio_relay_to_fdpass"] = round(statistics.median(paired), 3)
    out["what"] = {
        "down": f"the service sends {nbytes} bytes (sendfile), read 256 KiB at a time until its close",
        "up": f"{nbytes} bytes written 256 KiB at a time, until the service's count came back",
        "direct": f"a plain connect to the unprotected port {DIRECT_BULK_PORT} (no stealth on the path)",
        "fdpass": f"`stealth-connect --fdpass HOST {BULK_PORT}`: the socket, passed over a socketpair",
        "relay": f"`stealth-connect HOST {BULK_PORT}` as a ProxyCommand: its stdin and stdout are pipes",
        "clock": "from the request to the last byte (after the service's greeting: knock excluded)",
    }
    return out


def logins(sl: StealthLab, venv: dict[str, Any], samples: int) -> dict[str, Any]:
    proxy = shlex.join([venv["stealth_connect"], "--state-dir", str(sl.client_dirs["alice"])])
    host = sl.srv.ip4
    argvs = {
        "direct": sl.ssh_argv("alice", host, command="true", knock=False, extra=["-p", str(DIRECT_SSH_PORT)]),
        "fdpass": sl.ssh_argv("alice", host, command="true", knock=False, extra=[
            "-o", f"ProxyCommand={proxy} --fdpass %h %p", "-o", "ProxyUseFdpass=yes"]),
        "relay": sl.ssh_argv("alice", host, command="true", knock=False,
                             extra=["-o", f"ProxyCommand={proxy} %h %p"]),
    }
    fds_argv = [*argvs["relay"][:-1], "sleep 1"]
    doc, command = _worker(sl, {"mode": "logins", "samples": samples, "argvs": argvs, "fds_argv": fds_argv},
                           timeout=samples * 30 + 60)
    out: dict[str, Any] = {"command": command, "proxycommand_fds": doc["proxycommand_fds"],
                           "argvs": {m: shlex.join(a) for m, a in argvs.items()}, **_summaries(doc)}
    base = out["direct"].get("p50_ms")
    for name in ("fdpass", "relay"):
        p50 = out[name].get("p50_ms")
        out[name]["ratio_to_direct"] = round(p50 / base, 3) if p50 and base else None
    return out


def run(quick: bool) -> dict[str, Any]:
    """The whole section; a figure that fails is recorded as its error."""
    sizes = {"start_samples": 50 if quick else 200, "bytes": 200_000_000 if quick else 500_000_000,
             "rounds": 3 if quick else 7, "login_samples": 15 if quick else 60}
    venv = client_venv()
    out: dict[str, Any] = {"sizes": sizes, "venv": venv}
    with stealth_lab(server_id="bench-client", ports=PORTS, clients=("alice",), start=False) as sl:
        check_no_route_out(sl)
        _start_service(sl)
        sl.start_server()
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "start_to_fd": lambda: start(sl, venv, sizes["start_samples"]),
            "bulk": lambda: bulk(sl, venv, sizes["bytes"], sizes["rounds"]),
            "logins": lambda: logins(sl, venv, sizes["login_samples"]),
        }
        for name, fn in steps.items():
            print(f"bench: client: {name}", file=sys.stderr, flush=True)
            try:
                out[name] = fn()
            except Exception as e:  # noqa: BLE001 -- one figure failing must not lose the others
                out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
    return out
