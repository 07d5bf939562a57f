# Why: property 4, tried as an attacker waits for it: the protection must not switch off when the daemon
# stops (SIGTERM, SIGINT, kill -9), when someone flushes the ruleset (`nft flush ruleset`, what an
# nftables reload does) or restores one saved before stealth started. The service listens on loopback
# only, so a stranger never gets its banner; the daemon notices missing rules within about a second and
# reinstalls them. Unprotected services on the wildcard address never depend on the daemon.
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged

DROP_RULES = [  # every host firewall lets loopback through; stealth hands connections to sshd over it
    ["INPUT", "-i", "lo", "-j", "ACCEPT"],
    ["INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ["INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"],  # the admin had ssh open before stealth
    ["INPUT", "-p", "tcp", "-j", "DROP"],
]
REPAIR_LIMIT_SECONDS = 2.5  # the daemon checks every RULE_CHECK_SECONDS (1 s); allow for a busy CI


lab = lab_fixture("failopen", start=False, name="lab")


@pytest.fixture(params=["reset", "drop"])
def host(request: pytest.FixtureRequest, lab: "StealthLab") -> Iterator[str]:
    kind: str = request.param
    tools = ("iptables", "ip6tables") if kind == "drop" else ()
    for tool in tools:
        for rule in DROP_RULES:
            lab.srv.run([tool, "-A", *rule])
    try:
        yield kind
    finally:
        if lab.server_proc is not None:
            lab.stop_server()
        for tool in tools:
            for rule in DROP_RULES:
                lab.srv.run([tool, "-D", *rule], check=False)


HOST_RULE = ["-p", "udp", "--dport", "9", "-m", "comment", "--comment", "host-rule"]


def saved_rules(lab: "StealthLab") -> dict[str, str]:
    """iptables-save of both families, with a rule of the host's own in the mangle and filter tables
    (as on any host whose firewall uses them), so restoring the save replaces those tables."""
    for tool in ("iptables", "ip6tables"):
        for table, chain in (("mangle", "PREROUTING"), ("filter", "INPUT")):
            if lab.srv.run([tool, "-t", table, "-C", chain, *HOST_RULE], check=False).returncode != 0:
                lab.srv.run([tool, "-t", table, "-A", chain, *HOST_RULE])
    return {tool: lab.srv.run([f"{tool}-save"]).stdout for tool in ("iptables", "ip6tables")}


def assert_stranger_gets_no_service(lab: "StealthLab", result: dict[str, Any], what: str) -> None:
    assert "SSH-" not in result["bytes"], (what, result)
    assert result["connected"] == 0, (what, result)
    assert result["attempts"] >= 5, result


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_stopping_the_daemon_leaves_the_port_closed(lab: "StealthLab", host: str, how: str) -> None:
    from scripts.lib.stealthlab import stranger, stranger_result

    lab.start_server()
    installed = saved_rules(lab)
    assert lab.server_proc is not None
    lab.server_proc.send_signal(getattr(signal, how))
    lab.server_proc.wait(timeout=15)
    lab.server_proc = None
    probes = [stranger(lab.atk, addr, 22, 1.5) for addr in (lab.srv.ip4, lab.srv.ip6)]
    for probe in probes:
        assert_stranger_gets_no_service(lab, stranger_result(probe), how)
    rules = saved_rules(lab)
    for tool, text in installed.items():  # kill -9 leaves them too; the queue has no reader: dropped
        ours = sorted(ln for ln in text.splitlines() if "STEALTH" in ln)
        assert ours == sorted(ln for ln in rules[tool].splitlines() if "STEALTH" in ln), tool
    lab.start_server()
    assert lab.ssh("alice", lab.srv.ip4).returncode == 0  # and the key holder still gets in


def _repair_time(lab: "StealthLab", since: float) -> float:
    from scripts.lib.netlab import wait_for

    def back() -> bool:
        out = lab.srv.run(["iptables-save", "-t", "mangle"]).stdout
        return "-A PREROUTING -p tcp -j STEALTH-50" in out and "TPROXY" in out

    wait_for(back, timeout=10, interval=0.02, what="the daemon to reinstall its rules")
    return time.monotonic() - since


@pytest.mark.parametrize("how", ["nft flush ruleset", "iptables-restore of a ruleset saved before"])
def test_flushed_or_restored_ruleset_is_repaired_and_never_opens_the_service(
    lab: "StealthLab", host: str, how: str
) -> None:
    from scripts.lib.stealthlab import stranger, stranger_result, tool

    lab.srv.run([tool("stealth"), "server", "rules", "remove", "--state-dir", str(lab.state_dir)])
    before = saved_rules(lab)  # a save from before stealth ever ran here
    assert "STEALTH" not in "".join(before.values())
    lab.start_server()
    probes = [stranger(lab.atk, addr, 22, 3.0) for addr in (lab.srv.ip4, lab.srv.ip6)]
    time.sleep(0.5)
    start = time.monotonic()
    if how.startswith("nft"):
        lab.srv.run(["nft", "flush", "ruleset"])
    else:
        for name, text in before.items():
            lab.srv.run([f"{name}-restore"], input=text)
    repaired = _repair_time(lab, start)
    print(f"{host} host, {how}: rules reinstalled after {repaired:.2f} s")
    assert repaired < REPAIR_LIMIT_SECONDS
    for probe in probes:
        assert_stranger_gets_no_service(lab, stranger_result(probe), how)
    status = lab.status()
    assert status["rule_repairs"] >= 1 and "STEALTH-50" in status["last_rule_problem"]
    assert lab.ssh("alice", lab.srv.ip4).returncode == 0
    log = lab.stop_server()
    assert "firewall rules were removed by someone else" in log
    if how.startswith("nft") and host == "drop":  # the host's own rules went with the flush
        for name in ("iptables", "ip6tables"):
            for rule in DROP_RULES:
                lab.srv.run([name, "-A", *rule])


def test_unprotected_wildcard_service_does_not_depend_on_the_daemon(lab: "StealthLab") -> None:
    from scripts.lib.netlab import wait_for

    web = lab.srv.popen(["python3", "-m", "http.server", "--bind", "::", "8080"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: "LISTEN" in lab.srv.run(["ss", "-Hltn", "sport = :8080"]).stdout, what="web server")

    def get() -> bool:
        r = lab.atk.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                         f"http://{lab.srv.ip4}:8080/"], check=False)
        return bool(r.stdout == "200")

    try:
        assert get()
        lab.start_server()
        assert get()
        lab.stop_server()
        assert get()
        lab.start_server()
        assert lab.server_proc is not None
        lab.server_proc.send_signal(signal.SIGKILL)
        lab.server_proc.wait(timeout=15)
        lab.server_proc = None
        assert get()
    finally:
        web.terminate()
        web.wait(timeout=10)


def test_a_public_listener_on_the_protected_port_is_refused(lab: "StealthLab") -> None:
    from scripts.lib.netlab import wait_for
    from scripts.lib.stealthlab import tool

    # sshd holds 127.0.0.1:22, so 0.0.0.0:22 cannot be bound; the public address itself can
    public = f"{lab.srv.ip4}:22"
    squatter = lab.srv.popen(["python3", "-c", "import socket, sys, time; "
                              "s = socket.create_server((sys.argv[1], 22)); time.sleep(60)", lab.srv.ip4])
    try:
        wait_for(lambda: public in lab.srv.run(["ss", "-Hltn", "sport = :22"]).stdout, what="squatter")
        result = lab.srv.run([tool("stealth"), "server", "run", "--state-dir", str(lab.state_dir)],
                             check=False, timeout=60)
        assert result.returncode == 1 and "ready" not in result.stdout
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and public in lines[0] and "loopback" in lines[0], result.stderr
    finally:
        squatter.kill()
        squatter.wait(timeout=10)


def test_no_ip6tables_refuses_to_start_and_ipv6_stays_closed(lab: "StealthLab") -> None:
    import shutil

    from scripts.lib.stealthlab import stranger, stranger_result, tool

    bin_dir = lab.lab.tmp / "no-ip6tables"
    bin_dir.mkdir(exist_ok=True)
    for name in ("iptables", "iptables-restore", "iptables-save", "nft", "ss"):
        path = shutil.which(name)
        if path and not (bin_dir / name).exists():
            (bin_dir / name).symlink_to(path)
    result = lab.srv.run(["env", f"PATH={bin_dir}", tool("stealth"), "server", "run", "--state-dir",
                          str(lab.state_dir)], check=False, timeout=60)
    assert result.returncode == 1 and "ready" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ip6tables" in lines[0] and "IPv6" in lines[0], result.stderr
    assert_stranger_gets_no_service(lab, stranger_result(stranger(lab.atk, lab.srv.ip6, 22, 1.5)), "no v6")
