# Why: the pcap tests (tests/adapters/test_pcap.py) replay real kernel traffic through `stealth inspect`. This
# script records that traffic in throw-away network namespaces (scripts/lib/netlab.py): a live `stealth server
# run` protecting 22 and 2222 (the services behind them listen on loopback), stealth-connect knocks, replays,
# wrong keys and ports, a recovery, a revoked client, nmap and hping3 scans and scapy-crafted malformed
# packets, all captured by tcpdump on the server's interface. It writes tests/captures/*.pcap (or --out DIR),
# the server states the test replays against (copied before any traffic, counters at 0; the recovery and
# revoked captures get copies taken just before them) and manifest.json. Every expectation in the manifest
# comes from what this script sent (which step, which token, which crafted bytes; devtools/capture_steps.py),
# never from running the gate, so the test catches a wrong gate. Run as root: scripts/record-captures (a shim;
# the code lives here so ruff and mypy see it).
import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from devtools.capture_steps import (
    PROTECTED,
    TCP_FLAG_ACK,
    TCP_FLAG_FIN,
    TCP_FLAG_SYN,
    CraftedStep,
    Expect,
    KnockStep,
    Recording,
    ScanStep,
    Step,
    Wire,
    accept,
    drop,
)

if TYPE_CHECKING:
    from scripts.lib.netlab import Lab

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
SCRIPT = ROOT / "scripts" / "record-captures"  # the shim: re-run under the venv, and the knock helper
OUT = ROOT / "tests" / "captures"

SERVER_ID = "capture-lab"
STATE_FILES = ("server.toml", "clients.jsonl", "counters.json", "counters.log")
SETTLE_SECONDS = 0.4
MAX_COUNTER = 64  # no client here knocks more often than this
# The option list Linux puts in its SYN, so crafted SYNs look like the kernel's own.
KERNEL_SYN_OPTIONS: list[tuple[str, Any]] = [
    ("MSS", 1460), ("SAckOK", b""), ("Timestamp", (2_000_000, 0)), ("NOP", None), ("WScale", 7),
]

# The services behind the protected ports, on loopback: the server refuses to start while a socket
# listens on a protected port's public address, and hands each accepted knock (either family) to
# 127.0.0.1:PORT (stealth/backend.py's default backend).
LISTENER = """
import socket, threading
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    while True:
        c, _ = s.accept()
        c.sendall(b"hello\\n")
        c.close()
for p in (22, 2222):
    threading.Thread(target=serve, args=(p,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""


# --- the lab session ------------------------------------------------------------------------------------
class Session:
    """The lab's hosts, the server state and profiles, and the recordings made so far."""

    def __init__(self, lab: "Lab") -> None:
        self.lab = lab
        self.srv, self.cli, self.atk = lab["srv"], lab["cli"], lab["atk"]
        self.tmp: Path = lab.tmp
        self.sd = self.tmp / "server-state"
        self.profiles = self.tmp / "profiles"
        self.profiles.mkdir()
        self.recording: Recording | None = None
        self.recordings: list[Recording] = []
        self.history: dict[tuple[int, int], str] = {}  # (dport, isn) -> the step that first sent it
        # (netlab keeps the lab's bridge a plain wire even with br_netfilter loaded)
        self.mac = {h.name: h.run(["cat", f"/sys/class/net/{h.iface}/address"]).stdout.strip()
                    for h in (self.srv, self.cli, self.atk)}

    # tools
    def stealth(self, *args: str) -> str:
        """Run the venv's `stealth` CLI here (not in a namespace); its stdout."""
        return run_checked([str(VENV_BIN / "stealth"), *args]).stdout

    def add_client(self, name: str, ports: str, *extra: str, state_dir: Path | None = None) -> Path:
        """Enroll `name` (in the server state, or `state_dir`); the path of its profile."""
        out = self.profiles / f"{name}{'-other' if state_dir else ''}.toml"
        self.stealth("server", "add-client", name, "--ports", ports, "--state-dir", str(state_dir or self.sd),
                     "--profile-out", str(out), *extra)
        return out

    def copy_state(self, dest: Path) -> None:
        """Replace `dest` with a copy of the server state files."""
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in STATE_FILES:
            if (self.sd / name).exists():  # counters.log exists once the server has run
                shutil.copy2(self.sd / name, dest / name)

    # recordings and steps
    @property
    def rec(self) -> Recording:
        """The recording under way."""
        assert self.recording is not None
        return self.recording

    @contextlib.contextmanager
    def record(self, name: str, covers: list[str], description: str, bpf: str = "tcp",
               state: str = "state") -> Iterator[Recording]:
        """tcpdump on the server's interface for the block; the steps inside become the manifest."""
        rec = Recording(name, covers, description, state)
        self.recording = rec
        with self.srv.capture(bpf) as cap:
            rec.path = cap.path
            time.sleep(0.2)
            yield rec
        self.recordings.append(rec)
        self.recording = None

    def step(self, step: Step, action: Callable[[], Any]) -> Any:
        """Run `action` as `step` of the recording under way, its window closed after the traffic settled."""
        step.start = time.time()
        result = action()
        time.sleep(SETTLE_SECONDS)
        step.end = time.time()
        self.rec.steps.append(step)
        time.sleep(0.05)
        return result

    # knocks
    def wires(self, profile: Path, counters: Iterable[int], dport: int) -> list[Wire]:
        """The token images of `profile` for `dport` at each of `counters`."""
        from stealth_connect.profiles import load_profile

        from stealth.core.token import derive

        prof = load_profile(profile)
        out = []
        for c in counters:
            k = derive(prof.key, prof.binding, dport, c)
            out.append(Wire(c, dport, k.isn, k.sport))
        return out

    def client_wires(self, profile: Path, dport: int, start: float, end: float) -> list[Wire]:
        """Every token stealth-connect may send with `profile` to `dport` between `start` and `end`: its
        first MAX_COUNTER counters and, for each recovery slot of that time, the slot's recovery token
        and the first MAX_COUNTER counters after the slot's base (where a taken recovery moves it, and
        where it probes after a refused one; client/stealth_connect/connect.py)."""
        from stealth.core.recovery import recovery_base, recovery_counter, slot_of

        counters = list(range(1, MAX_COUNTER + 1))
        for slot in range(slot_of(start), slot_of(end) + 1):
            base = recovery_base(slot)
            counters += [recovery_counter(slot), *range(base + 1, base + MAX_COUNTER + 1)]
        return self.wires(profile, counters, dport)

    def connect(self, what: str, profile: Path, host: str, port: int, accepted: bool, reason: str = "",
                timeout: float = 4.0, force_retransmit: bool = False, recovers: str = "",
                device: str = "client-state") -> KnockStep:
        """stealth-connect from cli with the counters of `device` (a client state directory); the step's
        tokens are any its counter file and the clock let it send (KnockStep says what each gets)."""
        argv = [str(VENV_BIN / "stealth-connect"), host, str(port), "--profile", str(profile),
                "--state-dir", str(self.tmp / device), "--timeout", str(timeout)]

        def act() -> subprocess.CompletedProcess[str]:
            if not force_retransmit:
                return self.cli.run(argv, check=False, input="", timeout=60)
            tool = "ip6tables" if ":" in host else "iptables"
            rule = ["INPUT", "-p", "tcp", "--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"]
            self.cli.run([tool, "-I", *rule])
            proc = self.cli.popen(argv, stdin=subprocess.PIPE)  # not DEVNULL: relay() epolls stdin
            time.sleep(1.6)  # the kernel resends its SYN after 1 s
            self.cli.run([tool, "-D", *rule])
            out, err = proc.communicate(input="", timeout=60)
            return subprocess.CompletedProcess(argv, proc.returncode, out, err)

        step = KnockStep(what, "", [], accepted, reason, retransmits=force_retransmit, history=self.history,
                         recovers=recovers)
        result = self.step(step, act)
        step.client_ip = self.cli.ip6 if ":" in host else self.cli.ip4
        # whichever counters (or recovery tokens) stealth-connect took, its SYNs carry this profile's
        # tokens for this port
        step.wires = self.client_wires(profile, port, step.start, step.end)
        ok = result.returncode == 0 and "hello" in result.stdout
        if ok != accepted:
            raise RuntimeError(f"{what}: stealth-connect {'failed' if accepted else 'succeeded'}: "
                               f"{result.returncode} {result.stdout!r} {result.stderr!r}")
        return step

    def knock(self, host_role: str, what: str, profile: Path, token_port: int, host: str, port: int,
              counter: int, accepted: bool, reason: str = "", timeout: float = 2.5) -> Wire:
        """The knock helper (this script's `knock` mode) in a namespace: a chosen token, any port."""
        h = self.lab[host_role]
        argv = [str(VENV_BIN / "python"), str(SCRIPT), "knock", "--profile", str(profile),
                "--token-port", str(token_port), "--host", host, "--port", str(port),
                "--timeout", str(timeout), "--counter", str(counter)]
        step = KnockStep(what, h.ip6 if ":" in host else h.ip4, [], accepted, reason, history=self.history)
        result = self.step(step, lambda: h.run(argv, timeout=60))
        info = json.loads(result.stdout)
        if info["connected"] != accepted:
            raise RuntimeError(f"{what}: knock helper connected={info['connected']}")
        wire = Wire(info["counter"], port, info["isn"], info["sport"])
        step.wires = [wire]
        return wire

    # crafted frames
    def send_frames(self, host_role: str, what: str, frames: Sequence[tuple[bytes, Expect]],
                    rst_from: Sequence[str] = ()) -> None:
        """Send `frames` byte-exact from `host_role` with tcpreplay, as one CraftedStep."""
        from scapy.utils import RawPcapWriter

        path = self.tmp / f"send-{secrets.token_hex(3)}.pcap"
        with RawPcapWriter(str(path), linktype=1, sync=True) as w:
            for frame, _ in frames:
                w.write(frame)
        h = self.lab[host_role]
        step = CraftedStep(what, frames, rst_from)
        replay = ["tcpreplay", "-q", "--pps", "20", "-i", h.iface, str(path)]
        self.step(step, lambda: h.run(replay, timeout=60))

    def ether(self, src_role: str, ip: Any) -> bytes:
        """The IP packet `ip` in an Ethernet frame from `src_role` to srv."""
        from scapy.layers.l2 import Ether

        raw = bytes(ip)
        etype = 0x86DD if raw[0] >> 4 == 6 else 0x0800
        return bytes(Ether(src=self.mac[src_role], dst=self.mac["srv"], type=etype)) + raw


def run_checked(argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run `argv`, raising with its stderr if it fails."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kw)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {result.returncode}: {result.stderr.strip()}")
    return result


# --- crafted packets ----------------------------------------------------------------------------------
def tcp_syn(sport: int, dport: int, seq: int, flags: str = "S", options: Any = None, **kw: Any) -> Any:
    """A scapy TCP SYN header with the kernel's options unless `options` is given."""
    from scapy.layers.inet import TCP

    opts = KERNEL_SYN_OPTIONS if options is None else options
    return TCP(sport=sport, dport=dport, seq=seq, flags=flags, window=64240, options=opts, **kw)


def ip4(src: str, dst: str, **kw: Any) -> Any:
    """A scapy IPv4 header as Linux sends it (DF unless `flags` is given, TTL 64, random id)."""
    from scapy.layers.inet import IP

    kw.setdefault("flags", "DF")
    return IP(src=src, dst=dst, ttl=64, id=secrets.randbelow(65536), **kw)


def ip6(src: str, dst: str, **kw: Any) -> Any:
    """A scapy IPv6 header as Linux sends it (hop limit 64, random flow label)."""
    from scapy.layers.inet6 import IPv6

    return IPv6(src=src, dst=dst, hlim=64, fl=secrets.randbelow(1 << 20), **kw)


# --- the recording plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profiles:
    """The enrolled clients' profiles; alice_other is an alice of another server state (another key)."""

    alice: Path
    bob: Path
    carol: Path
    dave: Path
    erin: Path
    frank: Path
    alice_other: Path


def enroll(s: Session, out: Path) -> Profiles:
    """Two server states (same id, other keys) and their clients; the state is copied to `out`/state
    before any traffic."""
    s.stealth("server", "init", "--state-dir", str(s.sd), "--server-id", SERVER_ID, "--ports", "22,2222")
    alice = s.add_client("alice", "22,2222")
    bob = s.add_client("bob", "22", "--no-port-bits")
    carol = s.add_client("carol", "22")
    dave = s.add_client("dave", "22,2222")
    erin = s.add_client("erin", "22", "--bind-source", s.cli.ip4)
    frank = s.add_client("frank", "22,2222")
    other_sd = s.tmp / "other-server-state"
    s.stealth("server", "init", "--state-dir", str(other_sd), "--server-id", SERVER_ID, "--ports", "22,2222")
    alice_other = s.add_client("alice", "22,2222", state_dir=other_sd)
    s.copy_state(out / "state")  # before any traffic: every counter is 0
    return Profiles(alice, bob, carol, dave, erin, frank, alice_other)


def start_server(s: Session, log: IO[str]) -> "tuple[subprocess.Popen[str], subprocess.Popen[str]]":
    """The service on loopback 22 and 2222, then `stealth server run` (stderr to `log`): both, once
    ready."""
    listener = s.srv.popen([str(VENV_BIN / "python"), "-c", LISTENER])
    assert listener.stdout is not None
    if "listening" not in listener.stdout.readline():
        raise RuntimeError("listener did not start")
    server = s.srv.popen([str(VENV_BIN / "stealth"), "server", "run", "--state-dir", str(s.sd)], stderr=log)
    assert server.stdout is not None
    line = server.stdout.readline()
    if "ready" not in line:
        server.wait(timeout=15)
        log.flush()  # the lab's directory goes with the lab: say here what the server said
        said = (s.tmp / "server.log").read_text().strip()
        raise RuntimeError(f"stealth server did not start: {line!r}; its log:\n{said}")
    return listener, server


def record_valid(s: Session, p: Profiles) -> None:
    """valid.pcap: both families, both ports, a no-port-bits client, an ECN SYN, a lost SYN-ACK."""
    cli, v4, v6 = s.cli, s.srv.ip4, s.srv.ip6
    alice, bob, carol = p.alice, p.bob, p.carol
    with s.record("valid.pcap", ["valid"], "stealth-connect knocks that must be accepted, incl. a "
                  "no-port-bits client, an ECN SYN and a kernel SYN retransmission after a lost SYN-ACK"):
        s.connect("alice ipv4 :22", alice, v4, 22, True)
        s.connect("alice ipv4 :2222", alice, v4, 2222, True)
        s.connect("alice ipv6 :22", alice, v6, 22, True)
        s.connect("alice ipv6 :2222", alice, v6, 2222, True)
        s.connect("bob (no port bits) ipv4 :22", bob, v4, 22, True)
        s.connect("bob (no port bits) ipv6 :22", bob, v6, 22, True)
        s.connect("carol ipv4 :22", carol, v4, 22, True)
        cli.run(["sysctl", "-qw", "net.ipv4.tcp_ecn=1"])
        s.connect("alice ipv4 :22 with ECN (SYN|ECE|CWR)", alice, v4, 22, True)
        cli.run(["sysctl", "-qw", "net.ipv4.tcp_ecn=2"])
        s.connect("alice ipv4 :2222, first SYN-ACK lost", alice, v4, 2222, True, force_retransmit=True)
        s.connect("alice ipv6 :22, first SYN-ACK lost", alice, v6, 22, True, force_retransmit=True)


def record_replay(s: Session, p: Profiles) -> None:
    """replay.pcap: replays of a recorded valid SYN: exact bytes from cli and atk, then rewritten by atk."""
    from scapy.layers.inet import IP, TCP
    from scapy.layers.inet6 import IPv6

    cli, atk, v4, v6 = s.cli, s.atk, s.srv.ip4, s.srv.ip6
    with s.record("replay.pcap", ["replay"], "a valid knock, then its recorded SYN replayed: byte-exact "
                  "from the client and from the attacker, and with a rewritten source address/TSval"):
        originals = {}
        for fam, host, cip in (("ipv4", v4, cli.ip4), ("ipv6", v6, cli.ip6)):
            with cli.capture("tcp") as ccap:
                step = s.connect(f"dave {fam} :22", p.dave, host, 22, True)
            isns = {w.isn for w in step.wires}
            syn = next(f for f in ccap.packets() if TCP in f and f[TCP].flags == "S" and f[TCP].seq in isns
                       and (IP in f or IPv6 in f) and (f[IP].src if IP in f else f[IPv6].src) == cip)
            originals[fam] = bytes(syn)
        for fam in ("ipv4", "ipv6"):
            frame = originals[fam]
            ipb = frame[14:]
            s.send_frames("cli", f"{fam} replay: the recorded frame, byte-exact, from the client",
                          [(frame, drop("replay", f"{fam}: exact replay from cli"))])
            atk_exact = s.ether("atk", IPv6(ipb) if fam == "ipv6" else IP(ipb))
            rewritten = IPv6(ipb) if fam == "ipv6" else IP(ipb)
            rewritten.src = atk.ip6 if fam == "ipv6" else atk.ip4
            del rewritten[TCP].chksum
            if fam == "ipv4":
                del rewritten[IP].chksum
            bumped = rewritten.copy()
            bumped[TCP].options = [(k, (v[0] + 5000, v[1]) if k == "Timestamp" else v)
                                   for k, v in bumped[TCP].options]
            del bumped[TCP].chksum
            s.send_frames("atk", f"{fam} replays from the attacker", [
                (atk_exact, drop("replay", f"{fam}: exact IP bytes from atk (client address spoofed)")),
                (s.ether("atk", rewritten), drop("replay", f"{fam}: source rewritten to atk, checksum ok")),
                (s.ether("atk", bumped), drop("replay", f"{fam}: source rewritten, TSval advanced")),
            ], rst_from=[atk.ip4, atk.ip6])


def record_wrong_port(s: Session, p: Profiles) -> None:
    """wrong_port.pcap: dave's token for one port sent to the other."""
    dave, v4, v6 = p.dave, s.srv.ip4, s.srv.ip6
    with s.record("wrong_port.pcap", ["wrong_port"], "dave's token for one port sent to the other port "
                  "(the host resets it, as it does at its unused ports)"):
        # counters 10.. : stealth-connect used dave's first ones for the replay capture
        unknown = "unknown_token"
        s.knock("cli", "dave ipv4: token for :22 sent to :2222", dave, 22, v4, 2222, 10, False, unknown)
        s.knock("cli", "dave ipv4: token for :2222 sent to :22", dave, 2222, v4, 22, 11, False, unknown)
        s.knock("cli", "dave ipv6: token for :22 sent to :2222", dave, 22, v6, 2222, 12, False, unknown)


def record_wrong_key(s: Session, p: Profiles) -> None:
    """wrong_key.pcap: alice's name and server id, another server state's key."""
    alice_other, v4, v6 = p.alice_other, s.srv.ip4, s.srv.ip6
    with s.record("wrong_key.pcap", ["wrong_key"], "a profile for the same server id and name, but "
                  "from another state dir (another key): every SYN is unknown, the client's fall-backs "
                  "after each RST included (its recovery token, the first counter after the slot's base, "
                  "and on the next run the recovery token at once)"):
        s.connect("alice with another server's key, ipv4 :22", alice_other, v4, 22, False, "unknown_token",
                  timeout=1.5)
        s.connect("alice with another server's key, ipv6 :2222", alice_other, v6, 2222, False,
                  "unknown_token", timeout=1.5)


def record_wrong_source(s: Session, p: Profiles) -> None:
    """wrong_source.pcap: erin's source-bound tokens from her address, then from the attacker."""
    erin, v4 = p.erin, s.srv.ip4
    with s.record("wrong_source.pcap", ["wrong_source"], "erin's tokens are bound to the client's address: "
                  "accepted from there, dropped from the attacker who stole her key"):
        s.connect("erin (bound to cli) ipv4 :22", erin, v4, 22, True)
        s.knock("atk", "erin's key used from atk", erin, 22, v4, 22, 5, False, "wrong_source")


def syn_only(f: int) -> bool:
    """SYN set, FIN, RST and ACK clear."""
    return f & 0x17 == TCP_FLAG_SYN


NMAP_SCANS: list[tuple[str, str, Callable[[int], bool]]] = [
    ("-sS", "unknown_token", syn_only), ("-sT", "unknown_token", syn_only),
    ("-sA", "not_syn", lambda f: f & 0x17 == TCP_FLAG_ACK),
    ("-sF", "not_syn", lambda f: f & 0x3F == TCP_FLAG_FIN),
    ("-sN", "not_syn", lambda f: f & 0x3F == 0),
    ("-sX", "not_syn", lambda f: f & 0x3F == 0x29)]

HPING_PROBES: list[tuple[str, list[str], str, Callable[[int], bool]]] = [
    ("SYN", ["-S"], "unknown_token", syn_only),
    ("FIN", ["-F"], "not_syn", lambda f: f & 0x3F == TCP_FLAG_FIN),
    ("NULL", [], "not_syn", lambda f: f & 0x3F == 0),
    ("Xmas", ["-F", "-P", "-U"], "not_syn", lambda f: f & 0x3F == 0x29),
    ("ACK", ["-A"], "not_syn", lambda f: f & 0x3F == TCP_FLAG_ACK),
    ("SYN+FIN", ["-S", "-F"], "not_syn", lambda f: f & 0x3F == 0x03),
    ("SYN with 32 bytes of data", ["-S", "-d", "32"], "syn_with_data", syn_only)]


def record_nmap(s: Session) -> None:
    """nmap.pcap: nmap scans from atk, both families."""
    atk, v4, v6 = s.atk, s.srv.ip4, s.srv.ip6
    with s.record("nmap.pcap", ["nmap"], "nmap -sS -sT -sA -sF -sN -sX from atk against 21-23,2222 "
                  "(21 and 23 are closed neighbours, ignored here), and -6 -sS"):
        for flag, reason, check in NMAP_SCANS:
            s.step(ScanStep(f"nmap {flag}", [atk.ip4], reason, check),
                   functools.partial(atk.run, ["nmap", "-n", "-Pn", flag, "-T4", "--max-retries", "1",
                                               "-p", "21-23,2222", v4], timeout=120))
        s.step(ScanStep("nmap -6 -sS", [atk.ip6], "unknown_token", syn_only),
               lambda: atk.run(["nmap", "-6", "-n", "-Pn", "-sS", "-T4", "--max-retries", "1",
                                "-p", "21-23,2222", v6], timeout=120))


def record_hping3(s: Session) -> None:
    """hping3.pcap: hping3 probes from atk to both protected ports."""
    atk, v4 = s.atk, s.srv.ip4
    with s.record("hping3.pcap", ["hping3"], "hping3 probes from atk to :22 and :2222"):
        for label, flags, reason, check in HPING_PROBES:
            for port in PROTECTED:
                s.step(ScanStep(f"hping3 {label} :{port}", [atk.ip4], reason, check, minimum=2),
                       functools.partial(
                           atk.run, ["hping3", "-q", "-c", "2", "-i", "u100000", *flags, "-p", str(port), v4],
                           check=False, timeout=30))


class Crafter:
    """Frames crafted from atk, mostly carrying a fresh live token of one client (counters ascending, all
    within the window), each with its expectation, in sending order."""

    def __init__(self, s: Session, profile: Path) -> None:
        self.s, self.profile = s, profile
        self.counter = iter(range(1, 17))
        self.a4, self.a6, self.v4, self.v6 = s.atk.ip4, s.atk.ip6, s.srv.ip4, s.srv.ip6
        self.fid = secrets.randbelow(65536)  # IP fragment ids: fid, fid + 1, fid + 2
        self.frames: list[tuple[bytes, Expect]] = []

    def token(self, dport: int) -> Wire:
        """The client's next token for `dport`."""
        return self.s.wires(self.profile, [next(self.counter)], dport)[0]

    def add(self, ip: Any, expect: Expect) -> None:
        """Frame the IP packet `ip` from atk to srv."""
        self.frames.append((self.s.ether("atk", ip), expect))

    def bad_headers(self, t: Wire) -> None:
        """Truncated headers, header lengths that do not fit, source port 0."""
        a4, a6, v4, v6, add = self.a4, self.a6, self.v4, self.v6, self.add
        rand_isn = secrets.randbelow(1 << 32) | 1
        tcp_bytes = bytes(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn))[20:]
        add(ip4(a4, v4, proto=6) / tcp_bytes[:10],
            drop("malformed", "ipv4, TCP header truncated to 10 bytes"))
        add(ip4(a4, v4, ihl=4) / tcp_syn(t.sport or 40000, 22, t.isn), drop("malformed", "ipv4 IHL 4"))
        add(ip4(a4, v4, ihl=15) / tcp_syn(t.sport or 40000, 22, t.isn, options=[]),
            drop("malformed", "ipv4 IHL 15 beyond the packet"))
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn, dataofs=3),
            drop("malformed", "TCP data offset 3"))
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn, options=[], dataofs=15),
            drop("malformed", "TCP data offset 15 beyond the packet"))
        add(ip4(a4, v4) / tcp_syn(0, 22, rand_isn), drop("malformed", "source port 0"))
        short = bytes(ip4(a4, v4, len=80) / tcp_syn(t.sport or 40000, 22, t.isn))
        # by its header a SYN with 20 bytes of data (which are absent): tests/test_packet.py pins this reason
        add(short, drop("syn_with_data", "ipv4 total length 80 but only 60 bytes present"))
        add(ip6(a6, v6, nh=6, plen=20) / tcp_bytes[:10], drop("malformed", "ipv6, TCP header truncated"))

    def ipv4_fragments(self, t: Wire) -> None:
        """Fragments of SYNs carrying a live token (`t`'s, then a fresh one): the gate never reassembles."""
        from scapy.layers.inet import IP

        a4, v4, fid, add = self.a4, self.v4, self.fid, self.add
        syn4 = bytes(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn))
        seg = syn4[20:]
        for off in range(0, len(seg), 8):
            more = off + 8 < len(seg)
            add(IP(src=a4, dst=v4, ttl=64, id=fid, proto=6, flags="MF" if more else 0, frag=off // 8)
                / seg[off:off + 8], drop("fragment", f"ipv4 8-byte fragment at offset {off} of a token SYN"))
        t = self.token(22)
        syn4 = bytes(ip4(a4, v4, flags=0) / tcp_syn(t.sport or 40000, 22, t.isn))
        seg = syn4[20:]
        add(IP(src=a4, dst=v4, ttl=64, id=fid + 1, proto=6, flags="MF", frag=0) / seg[:24],
            drop("fragment", "ipv4 first fragment (24 bytes) of a token SYN"))
        add(IP(src=a4, dst=v4, ttl=64, id=fid + 1, proto=6, frag=3) / seg[24:],
            drop("fragment", "ipv4 last fragment of a token SYN"))

    def ipv6_extensions(self) -> None:
        """IPv6 extension headers (fragment, hop-by-hop, destination options) before a token SYN."""
        from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop

        a6, v6, fid, add = self.a6, self.v6, self.fid, self.add
        t = self.token(22)
        tcp6 = bytes(ip6(a6, v6) / tcp_syn(t.sport or 40000, 22, t.isn))[40:]
        add(ip6(a6, v6) / IPv6ExtHdrFragment(nh=6, offset=0, m=0, id=fid) / tcp6,
            drop("ipv6_extension", "ipv6 atomic fragment header before a token SYN"))
        add(ip6(a6, v6) / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=fid + 1) / tcp6[:16],
            drop("ipv6_extension", "ipv6 first fragment of a token SYN"))
        add(ip6(a6, v6) / IPv6ExtHdrFragment(nh=6, offset=2, m=0, id=fid + 1) / tcp6[16:],
            drop("ipv6_extension", "ipv6 last fragment of a token SYN"))
        add(ip6(a6, v6) / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=fid + 2) / tcp6[:8],
            drop("ipv6_extension", "ipv6 tiny (56-byte) first fragment of a token SYN"))
        add(ip6(a6, v6) / IPv6ExtHdrHopByHop(nh=6) / tcp6,
            drop("ipv6_extension", "ipv6 hop-by-hop header before a token SYN"))
        add(ip6(a6, v6) / IPv6ExtHdrDestOpt(nh=6) / tcp6,
            drop("ipv6_extension", "ipv6 destination-options header before a token SYN"))

    def wrong_one_way(self) -> None:
        """Well-formed but wrong in one way, each with a fresh live token."""
        a4, a6, v4, v6, add = self.a4, self.a6, self.v4, self.v6, self.add
        t = self.token(22)
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn, chksum=0x1234),
            drop("bad_checksum", "ipv4 token SYN, TCP checksum wrong"))
        t = self.token(2222)
        add(ip6(a6, v6) / tcp_syn(t.sport or 40000, 2222, t.isn, chksum=0x4321),
            drop("bad_checksum", "ipv6 token SYN, TCP checksum wrong"))
        t = self.token(22)
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn, flags="SF"), drop("not_syn", "SYN+FIN, token"))
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn, flags="SR"), drop("not_syn", "SYN+RST, token"))
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn, flags="SA"), drop("not_syn", "SYN+ACK, token"))
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, t.isn) / (b"x" * 16),
            drop("syn_with_data", "token SYN carrying 16 bytes of data"))
        add(ip4(a4, v4, proto=17) / bytes(tcp_syn(t.sport or 40000, 22, t.isn)),
            drop("not_tcp", "ipv4 proto 17"))
        add(ip4(a4, v4) / tcp_syn(t.sport or 40000, 22, secrets.randbelow(1 << 32) | 1,
                                   options=[("NOP", None)] * 4),
            drop("unknown_token", "ipv4 SYN, random ISN"))

    def odd_but_valid(self) -> None:
        """Two odd-looking SYNs a correct gate must still accept."""
        from scapy.layers.inet import IPOption_Router_Alert

        a4, v4 = self.a4, self.v4
        t = self.token(22)
        self.add(ip4(a4, v4, options=[IPOption_Router_Alert()]) / tcp_syn(t.sport or 40000, 22, t.isn),
                 accept("valid", "ipv4 token SYN with an IP option (router alert, IHL 6)"))
        t = self.token(2222)
        bare = ip4(a4, v4) / tcp_syn(t.sport or 40000, 2222, t.isn, options=[])
        padded = self.s.ether("atk", bare) + b"\0" * 6
        self.frames.append(
            (padded, accept("valid", "ipv4 option-less token SYN in a 60-byte padded Ethernet frame")))


def malformed_frames(s: Session, frank: Path) -> list[tuple[bytes, Expect]]:
    """Every crafted frame of malformed.pcap, mostly carrying live tokens of `frank`."""
    c = Crafter(s, frank)
    t = c.token(22)
    c.bad_headers(t)
    c.ipv4_fragments(t)
    c.ipv6_extensions()
    c.wrong_one_way()
    c.odd_but_valid()
    return c.frames


def record_malformed(s: Session, p: Profiles) -> None:
    """malformed.pcap: scapy-crafted frames from atk (see Crafter)."""
    frames = malformed_frames(s, p.frank)
    with s.record("malformed.pcap", ["malformed"], "scapy-crafted frames from atk, mostly carrying live "
                  "tokens of client frank: truncations, bad header lengths, fragments, IPv6 extension "
                  "headers, bad checksums, bad flag combinations",
                  bpf="tcp or udp dst port 22 or (ip6 and (ip6[6] == 0 or ip6[6] == 44 or ip6[6] == 60))"):
        s.send_frames("atk", "crafted", frames, rst_from=[s.atk.ip4, s.atk.ip6])


def record_recovery(s: Session, p: Profiles, out: Path) -> None:
    """recovery.pcap: bob's profile copied to a second device, whose counters start again at 1: its
    counter is refused as spent (bob's first device used it in valid.pcap), so it gets in with its
    recovery token. The capture gets its own state copy (bob's counter where valid.pcap left it)."""
    v4 = s.srv.ip4
    s.copy_state(out / "state-recovery")  # the journal has every accepted counter before its verdict
    with s.record("recovery.pcap", ["recovery"], "bob's profile on a second device (its own counters): "
                  "its first counter was spent by his first device (a replay, RST), so stealth-connect "
                  "knocks with the slot's recovery token, which gets in", state="state-recovery"):
        s.connect("bob's second device ipv4 :22", p.bob, v4, 22, True, recovers="replay",
                  device="client-state-2")


def record_revoked(s: Session, p: Profiles, out: Path) -> None:
    """revoked.pcap: carol is removed from the running server; the capture gets its own state copy."""
    v4 = s.srv.ip4
    s.stealth("server", "revoke", "carol", "--state-dir", str(s.sd))
    time.sleep(2.5)  # the server reloads clients.jsonl within a second
    s.copy_state(out / "state-revoked")
    with s.record("revoked.pcap", ["revoked"], "carol, revoked while the server runs: her next "
                  "knocks are unknown (her counter, then her recovery token and the first counter after the "
                  "slot's base, each after an RST); alice still gets in", state="state-revoked"):
        s.connect("carol (revoked) ipv4 :22", p.carol, v4, 22, False, "unknown_token", timeout=1.5)
        s.connect("alice ipv4 :22 after carol's revocation", p.alice, v4, 22, True)


def write_captures(s: Session, out: Path) -> dict[str, Any]:
    """Copies every recording to `out` and returns the manifest; raises if a capture differs from the
    plan."""
    captures = {}
    errors: list[str] = []
    for rec in s.recordings:
        assert rec.path is not None
        shutil.copyfile(rec.path, out / rec.name)
        captures[rec.name] = rec.manifest({s.srv.ip4, s.srv.ip6}, errors)
    if errors:
        raise RuntimeError("the captures differ from what was sent:\n  " + "\n  ".join(errors))
    return {
        "format": 1,
        "about": "Expected `stealth inspect` verdicts, derived from what scripts/record-captures sent. "
                 "'ignore': not inbound to a protected port. Replay each capture against a copy of its "
                 "state directory.",
        "server_id": SERVER_ID,
        "protected_ports": list(PROTECTED),
        "captures": captures,
    }


def record_all(s: Session, out: Path = OUT) -> dict[str, Any]:
    """Enrolls, starts the server, records every capture into `out` and returns the manifest."""
    p = enroll(s, out)
    log = open(s.tmp / "server.log", "w")  # the server writes to it until terminated
    _listener, server = start_server(s, log)
    record_valid(s, p)
    record_replay(s, p)
    record_wrong_port(s, p)
    record_wrong_key(s, p)
    record_wrong_source(s, p)
    record_nmap(s)
    record_hping3(s)
    record_malformed(s, p)
    record_recovery(s, p, out)
    record_revoked(s, p, out)
    server.terminate()
    server.wait(timeout=15)
    log.close()
    return write_captures(s, out)


# --- knock helper, run inside a namespace -----------------------------------------------------------------
def knock_main(argv: Sequence[str]) -> int:
    """`record-captures knock ...`: one kernel SYN carrying a chosen token to any port; prints JSON."""
    parser = argparse.ArgumentParser(prog="record-captures knock")
    parser.add_argument("--profile", type=Path, required=True)
    parser.add_argument("--token-port", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=2.5)
    parser.add_argument("--counter", type=int, required=True)
    args = parser.parse_args(argv)
    from stealth_connect.profiles import load_profile
    from stealth_connect.syn import knock_socket

    from stealth.core.token import derive

    prof = load_profile(args.profile)
    counter = args.counter
    k = derive(prof.key, prof.binding, args.token_port, counter)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = knock_socket(family, k.isn, k.sport)
    sock.settimeout(args.timeout)
    try:
        sock.connect((args.host, args.port))
        connected = True
    except (TimeoutError, OSError):
        connected = False
    sock.close()
    print(json.dumps({"counter": counter, "isn": k.isn, "sport": k.sport, "connected": connected}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Record every capture into --out (tests/captures by default) and print a summary per capture."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["knock"]:
        return knock_main(argv[1:])
    parser = argparse.ArgumentParser(prog="record-captures")
    parser.add_argument("--out", type=Path, default=OUT,
                        help="where the pcaps, manifest.json and state copies go (default: tests/captures)")
    out: Path = parser.parse_args(argv).out.resolve()
    if os.geteuid() != 0:
        print("record-captures: run as root (network namespaces, tcpdump, TCP_REPAIR)", file=sys.stderr)
        return 1
    from scripts.lib.netlab import Lab, missing_tools

    missing = missing_tools(["ip", "iptables", "ip6tables", "tcpdump", "tcpreplay", "nmap", "hping3"])
    if missing:
        print(f"record-captures: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.pcap"), out / "manifest.json"]:
        old.unlink(missing_ok=True)
    with Lab() as lab:
        print(f"record-captures: lab {lab.run_id} in {lab.tmp}", file=sys.stderr)
        manifest = record_all(Session(lab), out)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for name, cap in manifest["captures"].items():
        counts: dict[str, int] = {}
        for row in cap["packets"]:
            key = f"{row['verdict']}/{row.get('reason', '-')}"
            counts[key] = counts.get(key, 0) + 1
        summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{name}: {len(cap['packets'])} packets: {summary}")
    return 0


def entry() -> int:
    """scripts/record-captures: re-run under the project's virtualenv unless in one already, then main()."""
    if sys.prefix == sys.base_prefix and (VENV_BIN / "python").exists() and sys.argv[1:2] != ["knock"]:
        python = str(VENV_BIN / "python")  # re-run under the project's virtualenv
        os.execv(python, [python, str(SCRIPT), *sys.argv[1:]])  # noqa: S606
    return main()


if __name__ == "__main__":
    sys.exit(entry())
