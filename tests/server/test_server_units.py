# Why: the server's shipped unit must stay hardened (an exposure score a test reads, not a claim in the
# README), Type=notify must mean what it says (READY=1 only once the rules are in place, so sshd ordered
# after the unit never starts before the gate), and missing privileges must be told apart from a missing
# tool, in one line, before anything is touched.
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from stealth import firewall
from stealth.errors import FirewallError
from stealth.notify import notify
from tests.conftest import ROOT, lab_fixture, stealth_bin

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

UNIT = ROOT / "stealth" / "systemd" / "stealth.service"
MAX_EXPOSURE = 3.0
# the `stealth` command, run by the venv's python itself (setpriv execs it directly)
STEALTH_ARGV = [sys.executable, "-c", "import sys; from stealth_cli import main; sys.argv[0] = 'stealth'; "
                "sys.exit(main())"]


def test_server_service_exposure_is_low() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing (scripts/bootstrap installs systemd)")
    out = subprocess.run([tool, "security", "--offline=true", str(UNIT)], capture_output=True, text=True,
                         check=False)
    found = re.search(r"Overall exposure level for stealth\.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr
    print(f"stealth.service exposure: {found.group(1)}")
    assert float(found.group(1)) <= MAX_EXPOSURE


def test_unit_is_notify_ordered_like_a_firewall_and_keeps_sessions() -> None:
    lines = set(UNIT.read_text().splitlines())
    for wanted in ("Type=notify", "StateDirectory=stealth", "ConfigurationDirectory=stealth",
                   "Wants=network-pre.target", "KillMode=process", "ExecReload=/bin/kill -HUP $MAINPID",
                   "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW"):
        assert wanted in lines, wanted
    before = next(ln for ln in lines if ln.startswith("Before="))
    assert {"network-pre.target", "ssh.service", "sshd.service"} <= set(before[7:].split())
    after = next(ln for ln in lines if ln.startswith("After="))
    assert {"nftables.service", "ufw.service", "firewalld.service"} <= set(after[6:].split())
    assert not any(ln.startswith(("ProcSubset=pid", "PrivateNetwork=yes", "IPAddressDeny=")) for ln in lines)


def test_units_command_writes_the_unit(tmp_path: Path) -> None:
    result = subprocess.run([stealth_bin("stealth"), "server", "units", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stealth.service").read_text() == UNIT.read_text()
    missing = subprocess.run([stealth_bin("stealth"), "server", "units", str(tmp_path / "no" / "dir")],
                             capture_output=True, text=True, check=False)
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        yield sock, path


def test_notify_reaches_path_and_abstract_sockets(notify_socket: tuple[socket.socket, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify("READY=1", "STATUS=two\nlines")
    assert sock.recv(4096) == b"READY=1\nSTATUS=two lines"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = f"stealth-test-{os.getpid()}"
        abstract.bind(b"\0" + name.encode())
        abstract.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert notify("STOPPING=1")
        assert abstract.recv(4096) == b"STOPPING=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not notify("READY=1")


sl = lab_fixture("units", start=False, scope="function")


def saved_rules(host: Any) -> str:
    return "\n".join(host.run([t]).stdout for t in ("iptables-save", "ip6tables-save"))


@pytest.mark.privileged
def test_ready_is_sent_only_after_the_rules_are_in_place(sl: "StealthLab", tmp_path: Path) -> None:
    path = sl.lab.tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        proc = sl.srv.popen([stealth_bin("stealth"), "server", "run", "--state-dir", str(sl.state_dir)],
                            env={**os.environ, "NOTIFY_SOCKET": str(path)}, stderr=subprocess.DEVNULL)
        messages: list[str] = []
        while not messages or "READY=1" not in messages[-1]:
            messages.append(sock.recv(4096).decode())
        rules = saved_rules(sl.srv)  # at once: systemd starts what is ordered after us now
        proc.terminate()
        proc.wait(timeout=15)
        stopping = sock.recv(4096).decode()
    assert messages[0] == "STATUS=installing rules" and len(messages) == 2, messages
    assert "STATUS=ready queue=50" in messages[1]
    for table_line in ("-A PREROUTING -p tcp -j STEALTH-50", "-A INPUT -p tcp -j STEALTH-50",
                       "-A OUTPUT -p tcp -j STEALTH-50-out"):
        assert rules.count(table_line) == 2, table_line  # IPv4 and IPv6
    assert rules.count("-j NFQUEUE --queue-num 50") == 4  # the exempt sources' SYNs and the rest, twice
    assert proc.returncode == 0 and stopping.startswith("STOPPING=1")


def run_bounded(sl: "StealthLab", caps: str, uid: str = "0") -> "subprocess.Popen[str]":
    """`stealth server run` in the lab's server namespace with only `caps` (uid 0 unless told)."""
    pre = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps=-all,{caps}",
           f"--ambient-caps=-all,{caps}", f"--bounding-set=-all,{caps}"]
    proc: subprocess.Popen[str] = sl.srv.popen([*pre, *STEALTH_ARGV, "server", "run", "--state-dir",
                                                str(sl.state_dir)])
    return proc


@pytest.mark.privileged
def test_cap_net_admin_alone_is_refused_in_one_line_before_any_rule(sl: "StealthLab") -> None:
    before = saved_rules(sl.srv)
    proc = run_bounded(sl, "+net_admin")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "ready" not in out
    assert len(err.strip().splitlines()) == 1 and "CAP_NET_RAW" in err, err
    assert "STEALTH" not in saved_rules(sl.srv) and "STEALTH" not in before


@pytest.mark.privileged
def test_net_admin_and_net_raw_keep_every_feature(sl: "StealthLab") -> None:
    """The unit's capability set: rules (unauth auto reads every firewall style), queue, TPROXY
    listener, relays, and the rate-limit exemption list gets the source of an accepted knock."""
    from scripts.lib.stealthlab import tool

    proc = run_bounded(sl, "+net_admin,+net_raw")
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert "ready" in line, proc.communicate(timeout=15)
        knock = sl.cli.run([tool("stealth-connect"), "--state-dir", str(sl.client_dirs["alice"]),
                            "--timeout", "5", sl.srv.ip4, "22"], check=False, stdin=subprocess.DEVNULL,
                           timeout=30)
        assert knock.returncode == 0 and knock.stdout.startswith("SSH-"), knock.stderr
        listed = sl.srv.run(["sh", "-c", "cat /proc/net/xt_recent/stealth-good-50"]).stdout
        assert f"src={sl.cli.ip4} " in listed, listed
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_not_root_is_told_apart_from_not_installed() -> None:
    """No capabilities at all (what a normal user has; kept as uid 0 so that the checkout, wherever CI
    puts it, stays readable), PATH without /usr/sbin: iptables is there, we lack the privilege."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop every capability with setpriv")
    result = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", *STEALTH_ARGV, "server",
                             "run", "--state-dir", "/nonexistent"],
                            capture_output=True, text=True, check=False, timeout=30,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "needs root (or CAP_NET_ADMIN)" in line and "not installed" not in line, line


def test_messages_for_missing_tool_missing_privilege_and_path(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    (sbin / "iptables").write_text("#!/bin/sh\n")
    (sbin / "iptables").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(firewall, "SBIN_DIRS", (str(sbin),))
    monkeypatch.setattr(firewall, "effective_caps", lambda: 0)
    assert "needs root (or CAP_NET_ADMIN)" in str(firewall.cannot_run("iptables"))
    assert "is not installed" in str(firewall.cannot_run("ip6tables"))
    with pytest.raises(FirewallError, match="needs root"):
        firewall.apply([firewall.Step(("iptables", "-S"))])
    monkeypatch.setattr(firewall, "effective_caps", lambda: -1)
    assert f"not on PATH: it is {sbin}/iptables" in str(firewall.cannot_run("iptables"))
    assert "is not installed" in str(firewall.cannot_run("ip6tables"))
