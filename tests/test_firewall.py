# Why: the firewall plan is the security boundary; this snapshot pins every rule, so a change to it is a
# visible, reviewed change. It also pins the properties that must never regress: no --queue-bypass,
# only bare SYNs are queued, and everything else to a protected port ends in DROP.
from stealth.firewall import RuleConfig, Step, plan_install, plan_remove, restore_input

CFG = RuleConfig(queue=50, ports=(22, 2222), mark=0x10000000)

EXPECTED_RESTORE = """\
*mangle
:STEALTH-50 - [0:0]
-A STEALTH-50 -p tcp -m multiport ! --dports 22,2222 -j RETURN
-A STEALTH-50 -i lo -j RETURN
-A STEALTH-50 -m connmark --mark 0x10000000/0x10000000 -j ACCEPT
-A STEALTH-50 -p tcp --syn -j NFQUEUE --queue-num 50
COMMIT
*filter
:STEALTH-50 - [0:0]
-A STEALTH-50 -p tcp -m multiport ! --dports 22,2222 -j RETURN
-A STEALTH-50 -i lo -j RETURN
-A STEALTH-50 -m mark --mark 0x10000000/0x10000000 -j CONNMARK --save-mark --nfmask 0x10000000 --ctmask 0x10000000
-A STEALTH-50 -m connmark --mark 0x10000000/0x10000000 -j ACCEPT
-A STEALTH-50 -j DROP
COMMIT
"""


def test_restore_input_snapshot() -> None:
    assert restore_input(CFG) == EXPECTED_RESTORE


def test_install_plan_snapshot() -> None:
    assert plan_install(CFG, 4) == [
        Step(("iptables-restore", "-w", "--noflush"), stdin=EXPECTED_RESTORE),
        Step(("iptables", "-w", "-t", "mangle", "-I", "INPUT", "1", "-p", "tcp", "-j", "STEALTH-50"),
             unless=("iptables", "-w", "-t", "mangle", "-C", "INPUT", "-p", "tcp", "-j", "STEALTH-50")),
        Step(("iptables", "-w", "-t", "filter", "-I", "INPUT", "1", "-p", "tcp", "-j", "STEALTH-50"),
             unless=("iptables", "-w", "-t", "filter", "-C", "INPUT", "-p", "tcp", "-j", "STEALTH-50")),
    ]
    v6 = plan_install(CFG, 6)
    assert v6[0].argv[0] == "ip6tables-restore" and v6[0].stdin == EXPECTED_RESTORE
    assert {s.argv[0] for s in v6[1:]} == {"ip6tables"}


def test_remove_plan_deletes_jumps_before_chains() -> None:
    steps = plan_remove(CFG, 4)
    ops = [s.argv[4] for s in steps]
    assert ops == ["-D", "-D", "-F", "-X", "-F", "-X"]
    assert all(s.tolerate for s in steps) and steps[0].repeat and steps[1].repeat


def test_fail_closed_invariants() -> None:
    for family in (4, 6):
        text = " ".join(" ".join(s.argv) + (s.stdin or "") for s in plan_install(CFG, family))
        assert "--queue-bypass" not in text and "fail-open" not in text.lower()
    lines = EXPECTED_RESTORE.splitlines()
    filter_rules = lines[lines.index("*filter") + 2 : lines.index("COMMIT", lines.index("*filter"))]
    assert filter_rules[-1].endswith("-j DROP")  # the last word on a protected port is DROP
    queued = [ln for ln in lines if "NFQUEUE" in ln]
    assert queued == ["-A STEALTH-50 -p tcp --syn -j NFQUEUE --queue-num 50"]  # only bare SYNs
