# Why: one set of namespaces for the network benchmarks, built on scripts/lib/netlab (srv .1, cli .2,
# atk .3 on one bridge, test addresses only): a real `stealth server run` with 1,000 bulk-enrolled
# clients plus alice (a real client profile), a real sshd (on loopback for the protected port 22, which
# stealth hands it through its relay, and on every address for the unprotected, direct port 2222),
# trivial TCP listeners for connect timing (the protected one on loopback only), and fwknopd and knockd
# guarding ports of their own, configured the way their Debian docs describe.
# Flood sources are spoofed from 198.18.0.0/15; the server blackholes that range, so nothing it answers
# ever leaves the lab. Everything is torn down with the Lab.
import base64
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import BUILD, ROOT, note_command
from benchmarks.enroll import BenchClient, enroll_clients
from scripts.lib.netlab import Host, Lab, LabError, Roles, run, wait_for
from scripts.lib.stealthlab import StealthLab

SERVER_ID = "bench"
PROTECTED = "22,5022"  # sshd, and a trivial listener for connect timing
PORT_PLAIN, PORT_STEALTH, PORT_FWKNOP, PORT_KNOCKD = 5000, 5022, 5023, 5024
KNOCK_SEQUENCE = (7000, 8000, 9000)
QUEUE = 50

LISTENER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
for a in sys.argv[1:]:
    host, _, p = a.rpartition(":")
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(p))); s.listen(4096); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        try:
            c, _ = key.fileobj.accept(); c.close()
        except OSError:
            pass
"""


@dataclass
class BenchLab(Roles):
    lab: Lab
    sl: StealthLab
    bench_clients: list[BenchClient]
    init_args: list[str]
    tmp: Path
    fwknop_rc: Path = Path("/dev/null")
    info: dict[str, Any] = field(default_factory=dict)

    def mac(self, host: Host) -> str:
        doc = json.loads(host.run(["ip", "-j", "link", "show", "eth0"]).stdout)
        return str(doc[0]["address"])

    def server_pid(self) -> int:
        assert self.sl.server_proc is not None
        return self.sl.server_proc.pid

    def start_server(self, workers: int = 1) -> None:
        if workers == 1:
            self.sl.start_server()
            # the server on core 1, the sender (and the softirq work it drives) on core 0
            run(["taskset", "-a", "-pc", "1", str(self.server_pid())])
        else:
            self.sl.start_server(["--workers", str(workers)])  # the kernel places the workers

    def stop_server(self) -> None:
        self.sl.stop_server()

    def status_counts(self) -> dict[str, int]:
        try:
            doc = json.loads((self.sl.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        counts = doc.get("counts", {})
        return {str(k): int(v) for k, v in counts.items()}

    def accepted_counts(self) -> dict[str, int]:
        """SYNs the server accepted, from the kernel: the filter rule that saves the accept mark counts
        exactly the packets that came back from the queue with it (status.json is written by the
        server's loop, which a flood keeps busy)."""
        text = self.srv.run(["iptables", "-t", "filter", "-L", f"STEALTH-{QUEUE}", "-v", "-x", "-n"],
                            check=False).stdout
        for line in text.splitlines():
            if "CONNMARK" in line:
                return {"accepted_syns": int(line.split()[0])}
        return {}

    def flood_argv(self, mode: str, rate: float, seconds: float, tokens: Path | None = None,
                   offset: int = 0, mix_every: int = 100, port: int = 22) -> list[str]:
        argv = ["taskset", "-c", "0", str(BUILD / "synflood"), "eth0", self.info["srv_mac"],
                self.info["atk_mac"], self.srv.ip4, str(port), mode, f"{rate:.0f}", f"{seconds:g}"]
        if tokens is not None:
            argv += [str(tokens), str(offset), str(mix_every)]
        return self.atk.argv(argv)


def _init_args() -> list[str]:
    """Silence for unauthenticated packets, and the per-prefix SYN limit (if this version has one) set
    out of the way, so floods reach the gate: the gate is what is measured."""
    help_text = run([str(Path(sys.executable).parent / "stealth"), "server", "init", "--help"]).stdout
    args = []
    if "--unauth" in help_text:
        args += ["--unauth", "drop"]
    if "--syn-rate" in help_text:
        args += ["--syn-rate", "400000"]
    return args


def setup(lab: Lab, n_clients: int) -> BenchLab:
    tmp = lab.tmp
    ssh_dir = tmp / "ssh"
    ssh_dir.mkdir(mode=0o700)
    for key in ("host_key", "user_key"):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_dir / key)])
    (ssh_dir / "authorized_keys").write_text((ssh_dir / "user_key.pub").read_text())
    sl = StealthLab(lab, tmp / "server-state", ssh_dir)
    init_args = _init_args()
    init = ["server", "init", "--state-dir", str(sl.state_dir), "--server-id", SERVER_ID, "--ports",
            PROTECTED, *init_args]
    sl.stealth(*init)
    note_command(["stealth", *init])
    sl.start_sshd(extra_ports=(2222,))
    sl.enroll("alice", PROTECTED)
    clients = enroll_clients(sl.state_dir, n_clients, (22,))
    bl = BenchLab(lab, sl, clients, init_args, tmp)
    srv = lab["srv"]
    for knob in ("all", "default", "eth0"):
        srv.run(["sysctl", "-qw", f"net.ipv4.conf.{knob}.rp_filter=0"])
    srv.run(["ip", "route", "add", "blackhole", "198.18.0.0/15"])
    # the protected port's service on loopback only (stealth hands it the accepted connections; the
    # server refuses to start while anything listens on a protected port's public address)
    srv.popen([sys.executable, "-c", LISTENER, f"0.0.0.0:{PORT_PLAIN}", f"127.0.0.1:{PORT_STEALTH}",
               f"0.0.0.0:{PORT_FWKNOP}", f"0.0.0.0:{PORT_KNOCKD}"])
    wait_for(lambda: str(PORT_KNOCKD) in srv.run(["ss", "-Hltn"]).stdout, what="listeners")
    bl.info = {"srv_mac": bl.mac(srv), "atk_mac": bl.mac(lab["atk"])}
    _setup_fwknop(bl)
    _setup_knockd(bl)
    bl.start_server()
    return bl


def _setup_fwknop(bl: BenchLab) -> None:
    """fwknopd with a symmetric (Rijndael) key and an HMAC key, sniffing eth0, opening PORT_FWKNOP for
    FW_ACCESS_TIMEOUT 30 s via its own FWKNOP_INPUT chain; the port is otherwise dropped."""
    d = bl.tmp / "fwknop"
    d.mkdir(mode=0o700)
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    hmac = base64.b64encode(secrets.token_bytes(64)).decode()
    (d / "fwknopd.conf").write_text(f"PCAP_INTF eth0;\nFWKNOP_RUN_DIR {d};\nENABLE_DIGEST_PERSISTENCE Y;\n")
    (d / "access.conf").write_text(
        f"SOURCE ANY\nOPEN_PORTS tcp/{PORT_FWKNOP}\nKEY_BASE64 {key}\nHMAC_KEY_BASE64 {hmac}\n"
        "FW_ACCESS_TIMEOUT 30\n"
    )
    for f in ("fwknopd.conf", "access.conf"):
        (d / f).chmod(0o600)
    srv = bl.srv
    p = str(PORT_FWKNOP)
    srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", p, "-m", "conntrack", "--ctstate",
             "ESTABLISHED,RELATED", "-j", "ACCEPT"])
    srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", p, "-j", "DROP"])
    argv = ["fwknopd", "-f", "-c", str(d / "fwknopd.conf"), "-a", str(d / "access.conf"), "-d",
            str(d / "digest.cache"), "-i", "eth0"]
    note_command(["ip netns exec SRV", *argv])
    with open(d / "fwknopd.log", "w") as log:
        srv.popen(argv, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: srv.run(["iptables", "-n", "-L", "FWKNOP_INPUT"], check=False).returncode == 0,
             timeout=15, what="fwknopd to create FWKNOP_INPUT")
    rc = bl.tmp / "fwknoprc"
    rc.write_text(
        f"[bench]\nSPA_SERVER {srv.ip4}\nKEY_BASE64 {key}\nHMAC_KEY_BASE64 {hmac}\nUSE_HMAC Y\n"
        f"ALLOW_IP {bl.cli.ip4}\nACCESS tcp/{PORT_FWKNOP}\n"
    )
    rc.chmod(0o600)
    bl.fwknop_rc = rc


def _setup_knockd(bl: BenchLab) -> None:
    """knockd (libpcap on eth0), sequence 7000,8000,9000 of SYNs within 5 s, adds an ACCEPT for the
    knocking source to its own KNOCKD chain; PORT_KNOCKD is otherwise dropped."""
    d = bl.tmp / "knockd"
    d.mkdir()
    srv = bl.srv
    p = str(PORT_KNOCKD)
    srv.run(["iptables", "-N", "KNOCKD"])
    srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", p, "-m", "conntrack", "--ctstate",
             "ESTABLISHED,RELATED", "-j", "ACCEPT"])
    srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", p, "-j", "KNOCKD"])
    srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "--dport", p, "-j", "DROP"])
    seq = ",".join(map(str, KNOCK_SEQUENCE))
    (d / "knockd.conf").write_text(
        f"[options]\n    Interface = eth0\n    LogFile = {d / 'knockd.log'}\n\n"
        f"[bench]\n    sequence = {seq}\n    seq_timeout = 5\n    tcpflags = syn\n"
        f"    command = /usr/sbin/iptables -A KNOCKD -s %IP% -p tcp --dport {p} -j ACCEPT\n"
    )
    argv = ["knockd", "-c", str(d / "knockd.conf"), "-i", "eth0"]
    note_command(["ip netns exec SRV", *argv])
    with open(d / "knockd.out", "w") as log:
        srv.popen(argv, stdout=log, stderr=subprocess.STDOUT)
    wait_for(lambda: "listening" in (d / "knockd.log").read_text() if (d / "knockd.log").exists()
             else False, timeout=10, what="knockd to listen")
    time.sleep(0.2)


def check_no_route_out(bl: Roles) -> None:
    for host in (bl.srv, bl.cli, bl.atk):
        routes = host.run(["ip", "route", "show", "default"]).stdout.strip()
        if routes:
            raise LabError(f"{host.ns} has a default route: {routes}")


def env_for_tools() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env
