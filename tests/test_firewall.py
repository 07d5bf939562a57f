# Why: the firewall plan is the security boundary; this snapshot pins every rule, so a change to it is a
# visible, reviewed change. It also pins the properties that must never regress: no --queue-bypass,
# only bare SYNs are queued, and everything else to a protected port ends in DROP.
import pytest

from stealth.errors import FirewallError
from stealth.firewall import (
    RuleConfig,
    Step,
    plan_install,
    plan_remove,
    restore_input,
    unused_port_mode_from_rules,
)

CFG = RuleConfig(queue=50, ports=(22, 2222), mark=0x10000000)

EXPECTED_RESTORE = """\
*mangle
:STEALTH-50 - [0:0]
-A STEALTH-50 -p tcp -m multiport ! --dports 22,2222 -j RETURN
-A STEALTH-50 -i lo -j RETURN
-A STEALTH-50 -m connmark --mark 0x10000000/0x10000000 -j ACCEPT
-A STEALTH-50 -p tcp --syn -m recent --name stealth-good-50 --rcheck --seconds 86400 -j NFQUEUE --queue-num 50
-A STEALTH-50 -p tcp --syn -m hashlimit --hashlimit-above 100/sec --hashlimit-burst 200 --hashlimit-mode srcip --hashlimit-srcmask 24 --hashlimit-name stealth4-50 -j RETURN
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
    assert v6[0].argv[0] == "ip6tables-restore"
    assert v6[0].stdin == EXPECTED_RESTORE.replace("srcmask 24", "srcmask 64").replace("stealth4", "stealth6")
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
    assert len(queued) == 2 and all("-p tcp --syn " in ln for ln in queued)  # only bare SYNs


def test_reset_mode_rejects_everything_but_rst_with_the_kernels_rst() -> None:
    text = restore_input(RuleConfig(queue=50, ports=(22,), mark=0x10000000, mode="reset"))
    mangle_rules = text.split("*filter")[0].splitlines()
    # neighbours' SYNs without a socket take the same trip through the queue (equal RTT)
    assert mangle_rules[2:5] == [
        "-A STEALTH-50 -i lo -j RETURN",
        "-A STEALTH-50 -p tcp -m multiport ! --dports 22 ! --syn -j RETURN",
        "-A STEALTH-50 -p tcp -m multiport ! --dports 22 -m socket -j RETURN",
    ]
    filter_rules = text.split("*filter")[1].splitlines()
    assert filter_rules[-3:] == [
        "-A STEALTH-50 -p tcp ! --tcp-flags RST RST -j REJECT --reject-with tcp-reset",
        "-A STEALTH-50 -j DROP",
        "COMMIT",
    ]


@pytest.mark.parametrize(
    ("rules", "mode"),
    [
        (["-P INPUT ACCEPT"], "reset"),
        (["-P INPUT DROP"], "drop"),
        (["-P INPUT ACCEPT", "-A INPUT -p tcp -j STEALTH-50", "-A INPUT -j DROP"], "drop"),
        (["-P INPUT ACCEPT", "-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT", "-A INPUT -p tcp -j DROP"],
         "drop"),
        (["-P INPUT DROP", "-A INPUT -p tcp -j REJECT --reject-with tcp-reset"], "reset"),
        (["-P INPUT ACCEPT", "-A INPUT -s 10.0.0.0/8 -j DROP"], "reset"),  # not a catch-all
    ],
)
def test_auto_mode_follows_the_host(rules: list[str], mode: str) -> None:
    assert unused_port_mode_from_rules(rules, "STEALTH-50") == mode


def test_auto_mode_refuses_what_it_cannot_mimic() -> None:
    with pytest.raises(FirewallError, match="cannot mimic"):
        unused_port_mode_from_rules(["-P INPUT ACCEPT", "-A INPUT -j REJECT --reject-with icmp-port-unreachable"],
                                    "STEALTH-50")
