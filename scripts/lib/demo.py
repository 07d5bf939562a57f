# Why: the main job, end to end, in throw-away network namespaces, with the commands people type: the
# administrator enrolls alice on a server running a real sshd behind `stealth server run`; on the client
# machine root starts the agent once, and alice, an ordinary user (uid 65534, no capabilities, the
# client-only install), imports her profile, pastes the ~/.ssh/config block stealth prints and logs in
# with the real OpenSSH client; an attacker's nmap scan, replayed knock and stolen token see nothing.
# Everything is torn down at the end.
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.lib.netlab import send_raw
from scripts.lib.stealthlab import client_venv, replies, stealth_lab, syns
from scripts.lib.userlab import NOBODY, Agent, User, make_user, shared_dir, throwaway_group


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(argv: list[str], result: subprocess.CompletedProcess[str]) -> None:
    print(f"$ {shlex.join(argv)}")
    out = (result.stdout + result.stderr).strip()
    if out:
        print(out)
    print(f"(exit status {result.returncode})", flush=True)


def steal_next_knock(sl: Any, alice: User, host: str) -> dict[str, Any]:
    """Connect from the attacker with alice's next token, without her key: what a thief gets."""
    from stealth_connect.profiles import ClientStore, load_profile

    from scripts.lib.stealthlab import use_token
    from stealth.core.token import derive

    prof = load_profile(ClientStore(alice.state_dir).find(host))
    knock = derive(prof.key, prof.binding, 22, alice.last_used(host) + 1)
    assert knock.sport is not None
    return use_token(sl.atk, sl.srv.ip4, 22, knock.isn, knock.sport)


def admin_enrolls(sl: Any) -> Path:
    """What the administrator types on the server (the lab ran `init` and moved sshd to loopback)."""
    say("the administrator, on the server: enroll alice (sshd listens on 127.0.0.1 only)")
    print(f"$ stealth server init --state-dir {sl.state_dir} --server-id demo-server --ports 22 "
          "--seal 22=127.0.0.1:22   (done while building the lab)")
    profile: Path = sl.lab.tmp / "alice.profile"
    argv = ["stealth", "server", "add-client", "alice", "--ports", "22", "--state-dir", str(sl.state_dir),
            "--profile-out", str(profile)]
    show(argv, sl.stealth(*argv[1:]))
    return profile


def alice_logs_in(sl: Any, top: Path, group: tuple[str, int], profile: Path) -> tuple[User, bool, Any]:
    """Root starts the agent on the client machine; alice, not root, sets up and logs in."""
    say(f"root, on the client machine, once: groupadd {group[0]}; usermod -aG {group[0]} alice; and the "
        "agent (or: stealth client agent-units /etc/systemd/system && systemctl enable --now "
        "stealth-agent.socket)")
    venv = client_venv()  # alice's `pip install stealth` (client only: no compiler, no server parts)
    (top / "run").mkdir(mode=0o755)
    agent = Agent(sl, venv, top / "run" / "agent.sock", group[0], top / "agent.log")
    agent.start()
    print(f"$ stealth client agent --socket {agent.socket} --group {group[0]}")
    print(f"stealth agent ready on {agent.socket}")
    alice = make_user(sl, venv, group[1], top, agent, "alice")
    host = "server"
    say(f"alice (uid {NOBODY}, not root), on the client: import the profile, print the ssh config block")
    alice.import_profile(profile, host)
    print(f"$ stealth client import alice.profile --host {host}")
    argv = ["stealth", "client", "ssh-config", host, "--hostname", sl.srv.ip4, "--user", "root"]
    print(f"$ {shlex.join(argv)} >> ~/.ssh/config")
    alice.ssh_config("demo", host, "--hostname", sl.srv.ip4)
    print(alice.configs["demo"].read_text().split("\n\nHost *")[0])
    say(f"alice logs in: ssh {host}")
    command = "echo logged in to $(hostname) as $(whoami)"
    with sl.cli.capture("tcp port 22") as cap:
        result = alice.ssh("demo", host, command=command)
    show(["ssh", host, command], result)
    agent.stop()
    return alice, result.returncode == 0 and "logged in" in result.stdout, cap


def main() -> int:
    say("building namespaces: server 198.51.100.1 (sshd + stealth), client .2, attacker .3")
    seal = ("--seal", "22=127.0.0.1:22")  # port 22 is sealed: a token alone reaches nothing
    with (stealth_lab(server_id="demo-server", clients=(), start=False, init_args=seal) as sl,
          throwaway_group() as group, shared_dir("stealth-demo-") as top):
        srv, atk = sl.srv, sl.atk
        # a typical firewalled host: loopback and established traffic pass, unused ports drop silently;
        # sshd listens on 127.0.0.1:22 only, and stealth hands it the connections whose knock it accepted
        established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
        srv.run(["iptables", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        srv.run(["iptables", "-A", "INPUT", *established])
        srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP"])
        profile = admin_enrolls(sl)
        sl.start_server()
        print("$ systemctl start stealth   (here: stealth server run, in the server's namespace)")
        print(sl.stealth("server", "status", "--state-dir", str(sl.state_dir)).stdout.rstrip())

        alice, login_ok, cap = alice_logs_in(sl, top, group, profile)
        knocks = syns(cap.packets(), srv.ip4, 22)
        if knocks:
            tcp = knocks[0]["TCP"]
            print(f"the knock was the kernel's own SYN: source port {tcp.sport}, ISN {tcp.seq:#010x} "
                  "(both carry the one-time token; the agent set the ISN, alice's key never left her)")

        say("the attacker scans the server (nmap -sS): port 22 looks like every unused port")
        scan = ["nmap", "-sS", "-Pn", "-n", "-T4", "--max-retries", "1", "-p", "20-25", srv.ip4]
        scan_result = atk.run(scan, check=False, timeout=120)
        show(scan, scan_result)
        states = {line.split("/")[0]: line.split()[1] for line in scan_result.stdout.splitlines()
                  if "/tcp" in line}
        scan_blind = len(states) == 6 and len(set(states.values())) == 1

        say("the attacker replays alice's recorded knock from its own address")
        replay_silent = True
        if knocks:
            from scapy.layers.inet import IP, TCP

            moved = IP(bytes(knocks[0]["IP"]))
            moved.src = atk.ip4
            del moved.chksum
            del moved[TCP].chksum
            with atk.capture("tcp") as acap:
                send_raw(atk, bytes(moved))
                time.sleep(1.5)
            replay_silent = replies(acap.packets(), srv.ip4) == []
            print("replies seen by the attacker:", "none" if replay_silent else "SOME (unexpected)")

        say("the attacker steals alice's next knock (as one on the path would) and uses it first")
        stolen = steal_next_knock(sl, alice, "server")
        print(f"the stolen token got a connection: {stolen['connected']}; bytes from sshd: "
              f"{len(stolen['bytes']) // 2}; it ended with: {stolen['how']}")
        thief_blind = stolen["bytes"] == "" and stolen["how"] == "rst"
        print("(port 22 is sealed: the connection's first bytes must prove the knock's session key, which "
              "only alice's key gives; without it, an RST at the deadline and not one byte of sshd)")

        say("without a knock, ssh gets no answer at all")
        plain = sl.ssh_argv("alice", srv.ip4, knock=False, connect_timeout=3)
        plain_result = sl.cli.run(plain, check=False, timeout=30, stdin=subprocess.DEVNULL)
        show(plain, plain_result)

        time.sleep(1.1)
        say("server status (drops are counted by reason, never logged one by one)")
        print(sl.stealth("server", "status", "--state-dir", str(sl.state_dir)).stdout.rstrip())
        log = sl.stop_server()
        print("server log:\n" + log.rstrip())

    say("torn down: namespaces and their rules are gone")
    ok = login_ok and scan_blind and replay_silent and thief_blind and plain_result.returncode != 0
    print("demo", "succeeded" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
