# Why: the firewall plan is the security boundary; this snapshot pins every rule, so a change to it is a
# visible, reviewed change. It also pins the properties that must never regress: no --queue-bypass, only
# bare SYNs are queued, only the daemon's mark reaches TPROXY, no packet to an unprotected port is
# touched, and in drop mode everything else to a protected port ends in DROP.
from stealth.firewall import RuleConfig, Step, plan_install, plan_remove, restore_input
from stealth.server_config import UnauthMode

CFG = RuleConfig(queue=50, ports=(22, 2222), mark=0x10000000)

EXPECTED_RESTORE = """\
*mangle
:STEALTH-50 - [0:0]
:STEALTH-50-out - [0:0]
-A STEALTH-50 -p tcp -m multiport ! --dports 22,2222 -j RETURN
-A STEALTH-50 -i lo -j RETURN
-A STEALTH-50 -m addrtype ! --dst-type LOCAL -j RETURN
-A STEALTH-50 -m mark --mark 0x10000000/0x10000000 -j CONNMARK --save-mark --nfmask 0x10000000 --ctmask 0x10000000
-A STEALTH-50 -p tcp -m mark --mark 0x10000000/0x10000000 -j TPROXY --on-port 61050 --on-ip 127.0.0.1 --tproxy-mark 0x10000000/0x10000000
-A STEALTH-50 -p tcp --syn -m connmark --mark 0x10000000/0x10000000 -j TPROXY --on-port 61050 --on-ip 127.0.0.1 --tproxy-mark 0x10000000/0x10000000
-A STEALTH-50 -m connmark --mark 0x10000000/0x10000000 -j ACCEPT
-A STEALTH-50 -p tcp --syn -m recent --name stealth-good-50 --rcheck --seconds 86400 -j NFQUEUE --queue-num 50
-A STEALTH-50 -p tcp --syn -m hashlimit --hashlimit-above 100/sec --hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-srcmask 24 --hashlimit-name stealth4-50 -j DROP
-A STEALTH-50 -p tcp --syn -j NFQUEUE --queue-num 50
-A STEALTH-50 -j DROP
-A STEALTH-50-out -p tcp -m multiport ! --sports 22,2222 -j RETURN
-A STEALTH-50-out -o lo -j RETURN
-A STEALTH-50-out -p tcp -m tcp --tcp-flags RST RST -m connmark --mark 0x10000000/0x10000000 -j CONNMARK --set-xmark 0x0/0x10000000
COMMIT
*filter
:STEALTH-50 - [0:0]
-A STEALTH-50 -p tcp -m multiport ! --dports 22,2222 -j RETURN
-A STEALTH-50 -i lo -j RETURN
-A STEALTH-50 -m connmark --mark 0x10000000/0x10000000 -j ACCEPT
COMMIT
"""


def test_restore_input_snapshot() -> None:
    assert restore_input(CFG) == EXPECTED_RESTORE


def test_install_plan_snapshot() -> None:
    legacy = ("iptables", "-w", "-t", "mangle", "-D", "INPUT", "-p", "tcp", "-j", "STEALTH-50")
    assert plan_install(CFG, 4) == [
        Step(legacy, repeat=True, tolerate=True),  # the jump of versions before the TPROXY layout
        Step(("iptables-restore", "-w", "--noflush"), stdin=EXPECTED_RESTORE),
        Step(("iptables", "-w", "-t", "mangle", "-I", "PREROUTING", "1", "-p", "tcp", "-j", "STEALTH-50"),
             unless=("iptables", "-w", "-t", "mangle", "-C", "PREROUTING", "-p", "tcp", "-j", "STEALTH-50")),
        Step(("iptables", "-w", "-t", "mangle", "-I", "OUTPUT", "1", "-p", "tcp", "-j", "STEALTH-50-out"),
             unless=("iptables", "-w", "-t", "mangle", "-C", "OUTPUT", "-p", "tcp", "-j", "STEALTH-50-out")),
        Step(("iptables", "-w", "-t", "filter", "-I", "INPUT", "1", "-p", "tcp", "-j", "STEALTH-50"),
             unless=("iptables", "-w", "-t", "filter", "-C", "INPUT", "-p", "tcp", "-j", "STEALTH-50")),
    ]
    v6 = plan_install(CFG, 6)
    assert v6[1].argv[0] == "ip6tables-restore"
    assert v6[1].stdin == (EXPECTED_RESTORE.replace("srcmask 24", "srcmask 64").replace("stealth4", "stealth6")
                           .replace("--on-ip 127.0.0.1", "--on-ip ::1"))
    assert {s.argv[0] for s in v6[2:]} == {"ip6tables"}


def test_remove_plan_deletes_jumps_before_chains() -> None:
    steps = plan_remove(CFG, 4)
    ops = [s.argv[4] for s in steps]
    assert ops == ["-D", "-D", "-D", "-D", "-F", "-X", "-F", "-X", "-F", "-X"]
    assert all(s.tolerate for s in steps) and all(s.repeat for s in steps[:4])


def _mangle(cfg: RuleConfig) -> list[str]:
    """The rules of the mangle PREROUTING chain."""
    text = restore_input(cfg)
    return [ln for ln in text.split("*filter")[0].splitlines() if ln.startswith("-A STEALTH-50 ")]


def test_an_rst_from_the_server_unmarks_its_connection() -> None:
    """Conntrack does not reopen a connection the server reset when a SYN comes on its tuple, so the
    server's RST clears the mark: otherwise that SYN would ride the mark past the daemon."""
    out = [ln for ln in restore_input(CFG).splitlines() if ln.startswith("-A STEALTH-50-out ")]
    assert out[0] == "-A STEALTH-50-out -p tcp -m multiport ! --sports 22,2222 -j RETURN"
    assert "--tcp-flags RST RST -m connmark --mark 0x10000000/0x10000000" in out[-1]
    assert out[-1].endswith("-j CONNMARK --set-xmark 0x0/0x10000000")


def test_fail_closed_invariants() -> None:
    for family in (4, 6):
        text = " ".join(" ".join(s.argv) + (s.stdin or "") for s in plan_install(CFG, family))
        assert "--queue-bypass" not in text and "fail-open" not in text.lower()
    rules = _mangle(CFG)
    assert rules[-1] == "-A STEALTH-50 -j DROP"  # drop mode: the last word on a protected port is DROP
    queued = [ln for ln in rules if "NFQUEUE" in ln]
    assert len(queued) == 2 and all("-p tcp --syn " in ln for ln in queued)  # only bare SYNs
    # nothing but the daemon's mark (on the packet, or on the connection of a resent SYN) leads to TPROXY,
    # and only protected ports get this far
    assert [ln for ln in rules if "TPROXY" in ln] == rules[4:6]
    assert "-m mark --mark 0x10000000/" in rules[4] and "--syn -m connmark --mark 0x10000000/" in rules[5]
    # traffic this host forwards is not touched: only its own addresses go on, before anything else
    assert rules[2] == "-A STEALTH-50 -m addrtype ! --dst-type LOCAL -j RETURN"
    assert rules[0] == "-A STEALTH-50 -p tcp -m multiport ! --dports 22,2222 -j RETURN"


def test_reset_mode_leaves_unauthenticated_packets_to_the_kernel() -> None:
    rules = _mangle(RuleConfig(queue=50, ports=(22,), mark=0x10000000, mode=UnauthMode.RESET))
    # no REJECT, no DROP: what the daemon does not mark meets the kernel's TCP stack, which finds no
    # socket on the protected port; over-rate SYNs go there directly
    assert not any("REJECT" in ln or ln.endswith("-j DROP") for ln in rules)
    assert rules[-2].endswith("-j RETURN") and "hashlimit" in rules[-2]
    assert rules[-1] == "-A STEALTH-50 -p tcp --syn -j NFQUEUE --queue-num 50"
    # no rule for other ports at all (before, reset mode queued neighbours' SYNs for equal timing)
    assert not any("-m socket" in ln for ln in rules)
