# Why: the main job, end to end, in throw-away network namespaces: a server running a real sshd behind
# `stealth server run`, a client logging in with the real OpenSSH client through stealth-connect, and an
# attacker whose nmap scan and replayed knock see nothing. Everything is torn down at the end.
import shlex
import subprocess
import sys
import time
from typing import Any

from netlab import send_raw
from stealthlab import replies, stealth_lab, syns


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(argv: list[str], result: subprocess.CompletedProcess[str]) -> None:
    print(f"$ {shlex.join(argv)}")
    out = (result.stdout + result.stderr).strip()
    if out:
        print(out)
    print(f"(exit status {result.returncode})", flush=True)


def steal_next_knock(sl: Any) -> dict[str, Any]:
    """Connect from the attacker with alice's next token, without her key: what a thief gets."""
    from stealth_connect.profiles import ClientStore, load_profile
    from stealthlab import use_token

    from stealth.core.token import derive

    prof = load_profile(ClientStore(sl.client_dirs["alice"]).find(sl.srv.ip4))
    knock = derive(prof.key, prof.binding, 22, sl.counter("alice") + 1)
    assert knock.sport is not None
    return use_token(sl.atk, sl.srv.ip4, 22, knock.isn, knock.sport)


def main() -> int:
    say("building namespaces: server 198.51.100.1 (sshd + stealth), client .2, attacker .3")
    seal = ("--seal", "22=127.0.0.1:22")  # port 22 is sealed: a token alone reaches nothing
    with stealth_lab(server_id="demo-server", clients=("alice",), start=False, init_args=seal) as sl:
        srv, cli, atk = sl.srv, sl.cli, sl.atk
        # a typical firewalled host: loopback and established traffic pass, unused ports drop silently;
        # sshd listens on 127.0.0.1:22 only, and stealth hands it the connections whose knock it accepted
        established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
        srv.run(["iptables", "-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        srv.run(["iptables", "-A", "INPUT", *established])
        srv.run(["iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP"])
        sl.start_server()
        print("stealth server is running; alice's profile is imported on the client")
        print(sl.stealth("server", "status", "--state-dir", str(sl.state_dir)).stdout.rstrip())

        say("alice logs in: ssh -o ProxyCommand='stealth-connect %h %p' root@198.51.100.1")
        argv = sl.ssh_argv("alice", srv.ip4, command="echo logged in to $(hostname) as $(whoami)")
        with cli.capture("tcp port 22") as cap:
            result = cli.run(argv, check=False, timeout=60, stdin=subprocess.DEVNULL)
        show(argv, result)
        login_ok = result.returncode == 0
        knocks = syns(cap.packets(), srv.ip4, 22)
        if knocks:
            tcp = knocks[0]["TCP"]
            print(f"the knock was the kernel's own SYN: source port {tcp.sport}, ISN {tcp.seq:#010x} "
                  "(both carry the one-time token)")

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
        stolen = steal_next_knock(sl)
        print(f"the stolen token got a connection: {stolen['connected']}; bytes from sshd: "
              f"{len(stolen['bytes']) // 2}; it ended with: {stolen['how']}")
        thief_blind = stolen["bytes"] == "" and stolen["how"] == "rst"
        print("(port 22 is sealed: the connection's first bytes must prove the knock's session key, which "
              "only alice's key gives; without it, an RST at the deadline and not one byte of sshd)")

        say("without a knock, ssh gets no answer at all")
        plain = sl.ssh_argv("alice", srv.ip4, knock=False, connect_timeout=3)
        plain_result = cli.run(plain, check=False, timeout=30, stdin=subprocess.DEVNULL)
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
