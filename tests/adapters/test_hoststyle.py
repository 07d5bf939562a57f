# Why: `unauth = auto` reads what the host does with an unused port from every firewall style it may use:
# iptables (legacy or nft backend, as ufw and firewalld write it) and native nftables, which iptables
# cannot see. These cases pin the judgement on rulesets shaped like the real ones (the privileged host
# style tests in tests/e2e/test_hoststyles.py run the same code against real ufw and nft).
from typing import Any

import pytest

from stealth.errors import FirewallError
from stealth.hoststyle import nft_mode, xtables_mode

UFW = [  # `iptables -S` after `ufw enable` with its defaults (deny incoming), abridged
    "-P INPUT DROP", "-N ufw-before-input", "-N ufw-user-input", "-N ufw-after-input",
    "-N ufw-reject-input", "-N ufw-after-logging-input",
    "-A INPUT -j ufw-before-logging-input", "-A INPUT -j ufw-before-input", "-A INPUT -j ufw-after-input",
    "-A INPUT -j ufw-after-logging-input", "-A INPUT -j ufw-reject-input", "-A INPUT -j ufw-track-input",
    "-A ufw-before-input -i lo -j ACCEPT",
    "-A ufw-before-input -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    "-A ufw-before-input -j ufw-user-input",
    "-A ufw-user-input -p tcp -m tcp --dport 22 -j ACCEPT",
    "-A ufw-after-logging-input -m limit --limit 3/min --limit-burst 10 -j LOG --log-prefix \"[UFW BLOCK] \"",
]


@pytest.mark.parametrize(
    ("rules", "mode"),
    [
        (["-P INPUT ACCEPT"], None),
        (["-P INPUT DROP"], "drop"),
        (["-P INPUT ACCEPT", "-A INPUT -p tcp -j STEALTH-50", "-A INPUT -j DROP"], "drop"),
        (["-P INPUT ACCEPT", "-A INPUT -m conntrack --ctstate ESTABLISHED -j ACCEPT",
          "-A INPUT -p tcp -j DROP"], "drop"),
        (["-P INPUT DROP", "-A INPUT -p tcp -j REJECT --reject-with tcp-reset"], "reset"),
        (["-P INPUT ACCEPT", "-A INPUT -s 10.0.0.0/8 -j DROP"], None),  # not a catch-all
        (["-P INPUT ACCEPT", "-N x", "-A INPUT -j x", "-A x -j DROP"], "drop"),  # followed jump
        (["-P INPUT DROP", "-N x", "-A INPUT -j x", "-A x -j RETURN", "-A x -j ACCEPT"], "drop"),
        (UFW, "drop"),
    ],
)
def test_xtables_mode_follows_the_host(rules: list[str], mode: str | None) -> None:
    assert xtables_mode(rules, "STEALTH-50") == mode


def test_xtables_mode_refuses_what_it_cannot_mimic() -> None:
    with pytest.raises(FirewallError, match="cannot mimic"):
        xtables_mode(["-P INPUT ACCEPT", "-A INPUT -j REJECT --reject-with icmp-port-unreachable"], "S")


def _chain(name: str, family: str = "inet", table: str = "filter", **kw: Any) -> dict[str, Any]:
    return {"chain": {"family": family, "table": table, "name": name, **kw}}


def _rule(chain: str, *expr: Any, family: str = "inet", table: str = "filter") -> dict[str, Any]:
    return {"rule": {"family": family, "table": table, "chain": chain, "expr": list(expr)}}


TCP = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}
PORT22 = {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}}
ESTABLISHED = {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}
INPUT: dict[str, Any] = {"type": "filter", "hook": "input", "prio": 0}


@pytest.mark.parametrize(
    ("items", "family", "mode"),
    [
        ([], 4, None),
        ([_chain("input", **INPUT, policy="drop"), _rule("input", ESTABLISHED, {"accept": None}),
          _rule("input", PORT22, {"accept": None})], 4, "drop"),  # Debian's hardened example
        ([_chain("input", **INPUT, policy="accept"), _rule("input", TCP, {"counter": {}}, {"drop": None})],
         6, "drop"),
        ([_chain("input", **INPUT, policy="accept"),
          _rule("input", {"reject": {"type": "tcp reset"}})], 4, "reset"),
        ([_chain("input", **INPUT, policy="accept"), _chain("x"), _rule("input", {"jump": {"target": "x"}}),
          _rule("x", {"limit": {"rate": 5}}, {"drop": None}), _rule("x", {"drop": None})], 4, "drop"),
        ([_chain("input", family="ip6", **INPUT, policy="drop")], 4, None),  # another family's chain
        ([_chain("INPUT", family="ip", **INPUT, policy="accept"),  # iptables-nft's own: judged by xtables
          _rule("INPUT", TCP, {"drop": None}, family="ip")], 4, None),
        ([_chain("output", type="filter", hook="output", prio=0, policy="drop")], 4, None),
    ],
)
def test_nft_mode_follows_native_rulesets(items: list[dict[str, Any]], family: int, mode: str | None) -> None:
    assert nft_mode({"nftables": [{"metainfo": {}}, *items]}, family) == mode


def test_nft_mode_refuses_icmp_reject() -> None:
    items = [_chain("input", **INPUT, policy="accept"), _rule("input", {"reject": None})]
    with pytest.raises(FirewallError, match="cannot mimic"):
        nft_mode({"nftables": items}, 4)
