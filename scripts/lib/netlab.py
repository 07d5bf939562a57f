# Why: every privileged test and the demo need the same throw-away network: a server, a client and an
# attacker host, each in its own network namespace, joined by veth pairs to a bridge in a fourth
# namespace, with test addresses only (198.51.100.0/24, 2001:db8::/64) and no route out of the machine.
# Names are unique per run and everything (namespaces, the iptables rules inside them, processes we
# started) is removed on exit, even when a test fails.
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBNET4 = "198.51.100"
SUBNET6 = "2001:db8:5e::"


class LabError(RuntimeError):
    pass


def run(argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> {result.returncode}: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    lab: "Lab"
    name: str  # role: srv, cli, atk
    ns: str
    index: int

    @property
    def ip4(self) -> str:
        return f"{SUBNET4}.{self.index}"

    @property
    def ip6(self) -> str:
        return f"{SUBNET6}{self.index}"

    iface = "eth0"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run(self.argv(argv), check=check, **kw)

    def popen(self, argv: Sequence[str], **kw: Any) -> "subprocess.Popen[str]":
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.argv(argv), text=True, start_new_session=True, **kw)
        self.lab.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def capture(self, bpf: str, iface: str | None = None) -> Iterator["Capture"]:
        """tcpdump on this host's interface for the duration of the block."""
        path = self.lab.tmp / f"cap-{self.name}-{secrets.token_hex(3)}.pcap"
        proc = self.popen(
            ["tcpdump", "-U", "--immediate-mode", "-n", "-i", iface or self.iface, "-w", str(path), bpf],
            stdout=subprocess.DEVNULL,
        )
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on eth0 ..." once the socket is open
        if "listening" not in line:
            raise LabError(f"tcpdump did not start: {line.strip()}")
        cap = Capture(path)
        try:
            yield cap
        finally:
            time.sleep(0.3)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)


class Roles:
    """The three hosts by role, for anything that holds a Lab as `lab`."""

    lab: "Lab"

    @property
    def srv(self) -> Host:
        return self.lab["srv"]

    @property
    def cli(self) -> Host:
        return self.lab["cli"]

    @property
    def atk(self) -> Host:
        return self.lab["atk"]


@dataclass
class Capture:
    path: Path

    def packets(self) -> list[Any]:
        import scapy.layers.inet
        import scapy.layers.inet6
        import scapy.layers.l2  # noqa: F401 -- registers the link types rdpcap decodes
        from scapy.utils import rdpcap

        return list(rdpcap(str(self.path))) if self.path.stat().st_size > 24 else []


@dataclass
class Lab:
    """Namespaces srv (.1), cli (.2) and atk (.3) on one bridge. Use as a context manager."""

    roles: Sequence[str] = ("srv", "cli", "atk")
    tmp: Path = field(default_factory=lambda: Path("/tmp"))
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))
    procs: list["subprocess.Popen[str]"] = field(default_factory=list)
    hosts: dict[str, Host] = field(default_factory=dict)

    @property
    def switch(self) -> str:
        return f"st{self.run_id}-sw"

    def __enter__(self) -> "Lab":
        self.tmp = Path(run(["mktemp", "-d", f"/tmp/stealth-lab-{self.run_id}-XXXX"]).stdout.strip())
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, role: str) -> Host:
        return self.hosts[role]

    def _build(self) -> None:
        run(["ip", "netns", "add", self.switch])
        sw = ["ip", "netns", "exec", self.switch]
        run([*sw, "ip", "link", "add", "br0", "type", "bridge"])
        run([*sw, "ip", "link", "set", "br0", "up"])
        run([*sw, "ip", "link", "set", "lo", "up"])
        # with br_netfilter loaded, bridged frames would pass the switch's netfilter, which drops or trims
        # malformed ones; the switch must be a plain wire
        for fam in ("iptables", "ip6tables", "arptables"):
            knob = f"/proc/sys/net/bridge/bridge-nf-call-{fam}"
            run([*sw, "sh", "-c", f"[ ! -e {knob} ] || echo 0 > {knob}"])
        for index, role in enumerate(self.roles, start=1):
            host = Host(self, role, f"st{self.run_id}-{role}", index)
            self.hosts[role] = host
            run(["ip", "netns", "add", host.ns])
            peer = f"v{self.run_id}{index}"
            run(["ip", "link", "add", peer, "netns", self.switch, "type", "veth", "peer", "name", "eth0",
                 "netns", host.ns])
            run([*sw, "ip", "link", "set", peer, "master", "br0", "up"])
            host.run(["ip", "link", "set", "lo", "up"])
            host.run(["ip", "addr", "add", f"{host.ip4}/24", "dev", "eth0"])
            host.run(["ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", "eth0", "nodad"])
            host.run(["ip", "link", "set", "eth0", "up"])
            # real checksums in captures (veth otherwise leaves them to "hardware")
            host.run(["ethtool", "-K", "eth0", "tx", "off"], check=False)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
        for host in self.hosts.values():
            run(["ip", "netns", "pids", host.ns], check=False)
            _kill_ns(host.ns)
            run(["ip", "netns", "del", host.ns], check=False)
        run(["ip", "netns", "del", self.switch], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _kill_ns(ns: str) -> None:
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise LabError(f"timed out waiting for {what}")


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None and not Path(t).exists()]


_SEND_RAW = """
import socket, struct, sys, time
data = sys.stdin.buffer.read()
gap = float(sys.argv[1])
socks = {4: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW),
         6: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)}
sent = failed = 0
i = 0
while i < len(data):
    (n,) = struct.unpack_from("!I", data, i)
    p = data[i + 4 : i + 4 + n]
    i += 4 + n
    v6 = p[0] >> 4 == 6
    try:
        fam, raw = (socket.AF_INET6, p[24:40]) if v6 else (socket.AF_INET, p[16:20])
        dst = socket.inet_ntop(fam, raw)
        socks[6 if v6 else 4].sendto(p, (dst, 0))
        sent += 1
        if gap:
            time.sleep(gap)
    except (OSError, ValueError):
        failed += 1
print(sent, failed)
"""


def send_raw(host: Host, *packets: bytes, strict: bool = True, gap: float = 0.0) -> tuple[int, int]:
    """Put raw IP packets on the wire from inside `host`, exactly as given, from one process, `gap`
    seconds apart. Returns (sent, refused by the sender's kernel); with strict, any refusal raises."""
    import struct
    import sys

    blob = b"".join(struct.pack("!I", len(p)) + p for p in packets)
    result = subprocess.run(host.argv([sys.executable, "-c", _SEND_RAW, str(gap)]), input=blob,
                            capture_output=True, check=False)
    if result.returncode != 0:
        raise LabError(f"raw send failed: {result.stderr.decode(errors='replace').strip()}")
    sent, failed = (int(x) for x in result.stdout.split())
    if strict and failed:
        raise LabError(f"raw send: {failed} of {len(packets)} packets refused")
    return sent, failed
