# Why: the demo and the end-to-end tests run the same deployment: a stealth server protecting a real
# sshd in the server namespace, and the real OpenSSH client going through stealth-connect in the client
# namespace. This module sets that up on top of netlab, once, so both exercise exactly the same thing.
import atexit
import contextlib
import functools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.lib.netlab import Host, Lab, LabError, Roles, run, wait_for

VENV_BIN = Path(sys.executable).parent
SSHD = "/usr/sbin/sshd"
CHECKOUT = Path(__file__).resolve().parents[2]
CLIENT_TREE = ("pyproject.toml", "README.md", "stealth", "client")  # what `pip install .` builds from
SYSTEM_PYTHON = "/usr/bin/python3"  # one any user may run (the dev venv's may live under /root)


def tool(name: str) -> str:
    return str(VENV_BIN / name)


@dataclass
class StealthLab(Roles):
    lab: Lab
    state_dir: Path
    ssh_dir: Path
    client_dirs: dict[str, Path] = field(default_factory=dict)
    server_proc: "subprocess.Popen[str] | None" = None
    server_log: list[str] = field(default_factory=list)
    server_log_path: Path = Path("/dev/null")
    ready_line: str = ""
    sshd_proc: "subprocess.Popen[str] | None" = None

    # --- server side -------------------------------------------------------------------------------
    def stealth(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([tool("stealth"), *args], check=check)

    def enroll(self, name: str, ports: str = "22", extra: Sequence[str] = (),
               hosts: Sequence[str] | None = None) -> Path:
        """Enroll `name` and import its profile for the server's addresses into its own client dir."""
        profile = self.lab.tmp / f"{name}.profile.toml"
        self.stealth("server", "add-client", name, "--ports", ports, "--state-dir", str(self.state_dir),
                     "--profile-out", str(profile), *extra)
        cdir = self.lab.tmp / f"client-{name}"
        for host in hosts or (self.srv.ip4, self.srv.ip6):
            self.stealth("client", "import", str(profile), "--host", host, "--state-dir", str(cdir))
        self.client_dirs[name] = cdir
        return cdir

    def start_server(self, args: Sequence[str] = ()) -> None:
        # logs go to a file: a pipe nobody drains would block the server once it fills
        self.server_log_path = self.lab.tmp / f"server-{len(self.server_log)}.log"
        with open(self.server_log_path, "w") as log:
            proc = self.srv.popen(
                [tool("stealth"), "server", "run", "--state-dir", str(self.state_dir), *args], stderr=log
            )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            proc.wait(timeout=5)
            raise LabError(f"stealth server did not start: {line.strip()} {self.server_log_path.read_text()}")
        self.server_proc = proc
        self.ready_line = line.strip()

    def stop_server(self) -> str:
        """SIGTERM the server; return its log (stderr)."""
        proc = self.server_proc
        if proc is None:
            return ""
        proc.terminate()
        proc.communicate(timeout=15)
        err = self.server_log_path.read_text()
        self.server_proc = None
        self.server_log.append(err)
        return err

    def counter(self, name: str) -> int:
        """The last counter `name`'s client used (one key, one counter file)."""
        from stealth_connect.profiles import read_counter

        (path,) = (self.client_dirs[name] / "counters").glob("*.ctr")
        return read_counter(path).last_used

    def status(self) -> dict[str, Any]:
        import json

        doc: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        return doc

    def start_sshd(self, extra_ports: Sequence[int] = (2222,)) -> None:
        """sshd on loopback port 22 (the backend stealth hands accepted knocks on port 22 to, so the
        public port 22 has no socket) and on unprotected extra ports on every address."""
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        config = self.ssh_dir / "sshd_config"
        extra = [f"ListenAddress {a}:{p}" for p in extra_ports for a in ("0.0.0.0", "[::]")]
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1:22", "ListenAddress [::1]:22", *extra,
            f"HostKey {self.ssh_dir / 'host_key'}", f"PidFile {self.ssh_dir / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.ssh_dir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "LogLevel VERBOSE",
            "UseDNS no", "",
        ]))
        with open(self.ssh_dir / "sshd.log", "w") as log:
            proc = self.srv.popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
        wait_for(lambda: "LISTEN" in self.srv.run(["ss", "-Hltn", "sport = :22"]).stdout
                 or proc.poll() is not None, what="sshd to listen")
        if proc.poll() is not None:
            raise LabError(f"sshd exited: {(self.ssh_dir / 'sshd.log').read_text()}")
        self.sshd_proc = proc

    def stop_sshd(self) -> None:
        """Stop the listening sshd (sessions it forked stay)."""
        if self.sshd_proc is not None:
            self.sshd_proc.terminate()
            self.sshd_proc.wait(timeout=10)
            self.sshd_proc = None

    # --- client side -------------------------------------------------------------------------------
    def ssh_argv(self, name: str, host: str, command: str = "echo stealth-ok", fdpass: bool = False,
                 knock: bool = True, connect_timeout: int = 20, extra: Sequence[str] = ()) -> list[str]:
        argv = [
            "ssh", "-F", "none", "-i", str(self.ssh_dir / "user_key"), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={connect_timeout}",
        ]
        if knock:
            proxy = [tool("stealth-connect"), "--state-dir", str(self.client_dirs[name])]
            if fdpass:
                proxy.append("--fdpass")
                argv += ["-o", "ProxyUseFdpass=yes"]
            argv += ["-o", "ProxyCommand=" + shlex.join(proxy) + " %h %p"]
        return [*argv, *extra, f"root@{host}", command]

    def ssh(self, name: str, host: str, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.cli.run(self.ssh_argv(name, host, **kw), check=False, timeout=timeout,
                            stdin=subprocess.DEVNULL)


@functools.cache
def client_venv() -> Path:
    """A client-only install of this checkout, as a user makes one: `pip install` of a copy of the tree
    (no `[server]`, CC=/bin/false, so nothing may be compiled) into a fresh venv of the system python,
    in a directory every user can read. Built once per process, removed at exit; LabError if it fails."""
    top = Path(tempfile.mkdtemp(prefix="stealth-client-venv-"))
    atexit.register(shutil.rmtree, top, ignore_errors=True)
    top.chmod(0o755)
    src = top / "src"  # the build writes build/ and *.egg-info next to the sources: not into the repo
    for name in CLIENT_TREE:
        if (CHECKOUT / name).is_dir():
            shutil.copytree(CHECKOUT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(CHECKOUT / name, src / name)
    venv = top / "venv"
    install_client(src, venv)
    return venv


def install_client(src: Path, venv: Path) -> None:
    """`python3 -m venv VENV && VENV/bin/pip install SRC` as a user does it: the system python, none of
    this process's PYTHON* or VIRTUAL_ENV variables, and no compiler (CC=/bin/false: the client needs
    none). LabError if either step fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    run([SYSTEM_PYTHON, "-m", "venv", str(venv)], env=env, timeout=120)
    run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-input", str(src)],
        env={**env, "CC": "/bin/false", "CXX": "/bin/false"}, timeout=600)


def prepare(lab: Lab, server_id: str, ports: str, init_args: Sequence[str]) -> StealthLab:
    """Keys for sshd and the ssh user, an initialised stealth state directory and a running sshd."""
    ssh_dir = lab.tmp / "ssh"
    ssh_dir.mkdir(mode=0o700)
    for key in ("host_key", "user_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / key)])
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "user_key.pub").read_text())
    sl = StealthLab(lab, lab.tmp / "server-state", ssh_dir)
    sl.stealth("server", "init", "--state-dir", str(sl.state_dir), "--server-id", server_id,
               "--ports", ports, *init_args)
    sl.start_sshd()
    return sl


@contextlib.contextmanager
def stealth_lab(server_id: str = "lab", ports: str = "22", clients: Sequence[str] = ("alice",),
                start: bool = True, init_args: Sequence[str] = ()) -> Iterator[StealthLab]:
    with Lab() as lab:
        sl = prepare(lab, server_id, ports, init_args)
        for name in clients:
            sl.enroll(name, ports)
        try:
            if start:
                sl.start_server()
            yield sl
        finally:
            sl.stop_server()


def nmap_states(attacker: Host, target: str, scan: str, ports: str, out: Path,
                extra: Sequence[str] = ()) -> dict[int, tuple[str, str]]:
    """nmap `scan` of `ports` from `attacker`: {port: (state, reason)}."""
    import xml.etree.ElementTree as ET

    attacker.run(["nmap", scan, *extra, "-Pn", "-n", "-T4", "--max-retries", "1", "--reason", "-p", ports,
                  "-oX", str(out), target], timeout=180)
    states = {}
    for port in ET.parse(out).getroot().iter("port"):  # noqa: S314 -- nmap's output from our own run
        state = port.find("state")
        assert state is not None
        states[int(port.get("portid", "0"))] = (state.get("state", ""), state.get("reason", ""))
    return states


def write_results(out: Path, doc: dict[str, Any]) -> None:
    """A benchmark's figures, with the command line that produced them, as JSON (and echoed)."""
    import json

    doc = {"command": " ".join([f"scripts/{Path(sys.argv[0]).stem.replace('_', '-')}", *sys.argv[1:]]),
           **doc}
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


def replies(packets: Sequence[Any], src: str, sport: int | None = None) -> list[Any]:
    """TCP packets sent by `src` (from port `sport`), as seen in a capture."""
    out = []
    for p in packets:
        ip = p.getlayer("IP") or p.getlayer("IPv6")
        tcp = p.getlayer("TCP")
        if ip is None or tcp is None or ip.src != src:
            continue
        if sport is None or tcp.sport == sport:
            out.append(p)
    return out


def syns(packets: Sequence[Any], dst: str, dport: int) -> list[Any]:
    out = []
    for p in packets:
        ip = p.getlayer("IP") or p.getlayer("IPv6")
        tcp = p.getlayer("TCP")
        if ip is not None and tcp is not None and ip.dst == dst and tcp.dport == dport and tcp.flags == "S":
            out.append(p)
    return out


_STRANGER = """
import json, socket, sys, time
target, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in target else socket.AF_INET
out = {"attempts": 0, "connected": 0, "refused": 0, "silent": 0, "bytes": b""}
end = time.monotonic() + seconds
while time.monotonic() < end:
    s = socket.socket(fam)
    s.settimeout(0.2)
    out["attempts"] += 1
    try:
        s.connect((target, port))
        out["connected"] += 1
        try:
            out["bytes"] += s.recv(256)
        except OSError:
            pass
    except ConnectionRefusedError:
        out["refused"] += 1
    except OSError:
        out["silent"] += 1
    finally:
        s.close()
    time.sleep(0.02)
out["bytes"] = out["bytes"].decode("latin-1")
print(json.dumps(out))
"""


def stranger(host: Host, target: str, port: int, seconds: float) -> "subprocess.Popen[str]":
    """A plain client in `host` that connects to target:port over and over for `seconds`, reading
    whatever comes; its stdout is one JSON line: attempts, connected, refused, silent, bytes."""
    return host.popen([sys.executable, "-c", _STRANGER, target, str(port), str(seconds)])


def stranger_result(proc: "subprocess.Popen[str]") -> dict[str, Any]:
    import json

    out, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise LabError(f"stranger failed: {err}")
    doc: dict[str, Any] = json.loads(out)
    return doc


_CONNECT_WITH_ISN = """
import json, socket, sys, time
from stealth_connect.syn import knock_socket
host, port, isn, sport = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
proof, delay = bytes.fromhex(sys.argv[5]), float(sys.argv[6])
s = knock_socket(socket.AF_INET, isn, sport)
s.settimeout(15)
out = {"connected": False, "bytes": "", "closed_after": None, "how": ""}
t0 = time.monotonic()
try:
    s.connect((host, port))
    out["connected"] = True
    if proof:
        time.sleep(delay)
        s.sendall(proof)
    while True:
        chunk = s.recv(4096)
        if not chunk:
            out["how"] = "fin"
            break
        out["bytes"] += chunk.hex()
        if b"SSH-" in bytes.fromhex(out["bytes"]):
            out["how"] = "service"
            break
except ConnectionResetError:
    out["how"] = "rst"
except OSError as e:
    out["how"] = str(e)
out["closed_after"] = time.monotonic() - t0
print(json.dumps(out))
"""


def use_token(host: Host, target: str, port: int, isn: int, sport: int, proof: bytes = b"",
              delay: float = 0.0) -> dict[str, Any]:
    """What a token thief gets: from `host`, a connection whose SYN carries this ISN and source port
    (as a stolen or recorded knock has them), then `proof` after `delay` seconds if given, reading until
    the server closes or the service speaks. Returns connected, bytes (hex), how it ended
    (rst, fin, service, or an error) and closed_after (seconds)."""
    import json

    argv = [sys.executable, "-c", _CONNECT_WITH_ISN, target, str(port), str(isn), str(sport), proof.hex(),
            str(delay)]
    r = host.run(argv, timeout=60)
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc
