# Why: the server's promises around its own life: it refuses to start without its rules, installs them
# idempotently, removes exactly them on SIGTERM, fails closed when killed, never cuts an established
# session across a restart, logs one line per accept and none per junk packet; and the client's
# failure messages (privilege, timeout, out of window) are one clear line each.
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged


sl = lab_fixture("life", init_args=("--unauth", "drop"), start=False, scope="function")


def ruleset(host: Any) -> str:
    """Every rule and user chain, IPv4 and IPv6 (empty built-in tables don't count)."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        for line in host.run([tool]).stdout.splitlines():
            if line.startswith("*"):
                table = line
            elif line.startswith("-A") or (line.startswith(":") and " - " in line):
                out.append(f"{tool} {table} {line.split(' [')[0]}")
    return "\n".join(out)


def knock(sl: "StealthLab", timeout: str = "1.5") -> subprocess.CompletedProcess[str]:
    from scripts.lib.stealthlab import tool

    argv = [tool("stealth-connect"), "--state-dir", str(sl.client_dirs["alice"]), "--timeout", timeout,
            sl.srv.ip4, "22"]
    result: subprocess.CompletedProcess[str] = sl.cli.run(argv, check=False, stdin=subprocess.DEVNULL,
                                                          timeout=60)
    return result


def test_refuses_to_start_without_rules_and_leaves_nothing(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import tool

    before = ruleset(sl.srv)
    result = sl.srv.run(  # no iptables to be found on PATH
        ["env", "PATH=/nonexistent", tool("stealth"), "server", "run", "--state-dir", str(sl.state_dir)],
        check=False, timeout=30,
    )
    assert result.returncode == 1
    assert "ready" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "iptables" in lines[0], result.stderr
    assert ruleset(sl.srv) == before


def test_rules_stay_on_every_stop_and_only_rules_remove_takes_them_out(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import tool

    before = ruleset(sl.srv)
    sl.start_server()
    installed = ruleset(sl.srv)
    assert "NFQUEUE" in installed and "TPROXY" in installed and "--queue-bypass" not in installed
    sl.stop_server()  # SIGTERM
    assert ruleset(sl.srv) == installed
    sl.start_server()  # reinstalling over rules left in place must not duplicate anything
    assert ruleset(sl.srv) == installed
    assert sl.server_proc is not None
    sl.server_proc.send_signal(signal.SIGINT)
    sl.server_proc.wait(timeout=15)
    sl.server_proc = None
    assert ruleset(sl.srv) == installed
    sl.start_server()
    remove = [tool("stealth"), "server", "rules", "remove", "--state-dir", str(sl.state_dir)]
    refused = sl.srv.run(remove, check=False)
    assert refused.returncode == 1 and "running" in refused.stderr  # it would put them back at once
    assert ruleset(sl.srv) == installed
    sl.stop_server()
    removed = sl.srv.run(remove)
    assert "removed chain STEALTH-50" in removed.stdout and "loopback" in removed.stdout
    assert ruleset(sl.srv) == before


def test_status_tells_a_dead_daemon_from_a_running_one(sl: "StealthLab") -> None:
    def server_line() -> str:
        out: str = sl.stealth("server", "status", "--state-dir", str(sl.state_dir)).stdout
        return next(line for line in out.splitlines() if line.startswith("server:"))

    sl.start_server()
    assert server_line().startswith("server: running")
    assert sl.server_proc is not None
    os.killpg(sl.server_proc.pid, signal.SIGKILL)
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None
    assert server_line().startswith("server: dead: killed or crashed"), server_line()
    sl.start_server()
    sl.stop_server()
    assert server_line().startswith("server: stopped"), server_line()


def test_killed_server_fails_closed_and_restart_keeps_sessions(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import replies

    sl.start_server()
    session = sl.cli.popen(sl.ssh_argv("alice", sl.srv.ip4, command="sleep 7; echo survived"),
                           stdin=subprocess.DEVNULL)
    time.sleep(2.5)
    assert sl.server_proc is not None
    os.killpg(sl.server_proc.pid, signal.SIGKILL)  # no cleanup: rules stay, queue has no reader
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None
    with sl.cli.capture("tcp port 22 and tcp[tcpflags] & tcp-syn != 0") as cap:
        down = knock(sl)
    assert down.returncode == 1 and "no answer" in down.stderr
    assert replies(cap.packets(), sl.srv.ip4) == []  # a valid knock while down: dropped, no reply
    sl.start_server()  # restart while the ssh session is still open
    out, err = session.communicate(timeout=30)
    assert session.returncode == 0, err
    assert out.strip() == "survived"
    up = knock(sl, timeout="3")
    assert up.returncode == 0, up.stderr  # and the client was not locked out by the lost knock


def test_one_log_line_per_accept_and_none_per_junk_packet(sl: "StealthLab") -> None:
    sl.start_server()
    assert sl.ssh("alice", sl.srv.ip4).returncode == 0
    sl.atk.run(["hping3", "-S", "-p", "22", "--rand-source", "-i", "u1000", "-c", "2000", sl.srv.ip4],
               check=False, timeout=60)
    sl.atk.run(["hping3", "-F", "-p", "22", "-c", "50", "-i", "u1000", sl.srv.ip4], check=False, timeout=60)
    time.sleep(1.2)
    counts = sl.status()["counts"]
    log = sl.stop_server()
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len([ln for ln in lines if "accept client=alice" in ln]) == 1
    assert len(lines) == 1, lines  # 2000 junk SYNs: counted, not logged
    assert counts.get("unknown_token", 0) >= 1500
    assert counts.get("valid") == 1


def test_client_error_says_no_answer_and_resends_the_same_knock(sl: "StealthLab") -> None:
    sl.start_server()
    assert sl.server_proc is not None
    os.killpg(sl.server_proc.pid, signal.SIGKILL)  # server gone, rules in place: silence
    sl.server_proc.wait(timeout=10)
    sl.server_proc = None
    with sl.cli.capture("tcp dst port 22 and tcp[tcpflags] & tcp-syn != 0") as cap:
        for _ in range(3):
            result = knock(sl, timeout="0.5")
            assert result.returncode == 1
            assert len(result.stderr.strip().splitlines()) == 1
            assert "no answer" in result.stderr and "sends the same knock again" in result.stderr
    assert len({(p["TCP"].seq, p["TCP"].sport) for p in cap.packets()}) == 1  # one token, nothing spent
    assert sl.counter("alice") == 1
    sl.start_server()
    back = knock(sl, timeout="3")  # the same knock, heard at last
    assert back.returncode == 0, back.stderr
    assert sl.counter("alice") == 1


def test_client_without_cap_net_admin_or_agent_says_how_to_start_one(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import tool

    # root without CAP_NET_ADMIN: dropped from the bounding set, the exec'd client never has it
    # and no agent to ask: the one line says how to start one (never a file-capability recipe)
    no_agent = sl.lab.tmp / "no-agent.sock"
    argv = ["env", f"STEALTH_AGENT_SOCKET={no_agent}", tool("stealth-connect"), "--state-dir",
            str(sl.client_dirs["alice"]), sl.srv.ip4, "22"]
    result = sl.cli.run(["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *argv],
                        check=False, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAP_NET_ADMIN" in lines[0] and "stealth client agent" in lines[0], lines
    assert "setcap" not in lines[0] and str(no_agent) in lines[0]
