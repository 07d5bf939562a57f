# Why: `unauth = auto` must answer unauthenticated packets the way this host answers an unused port,
# whatever its firewall style: iptables-legacy, iptables-nft (ufw and firewalld's iptables backend write
# these), or a native nftables ruleset, which iptables cannot see at all. A packet must pass every base
# chain at the input hook, so one that drops an unused port's traffic makes the host a "drop" host.
# Each style is read by its own tool and judged by one pure function per style; what cannot be told
# (an ICMP reject, which stealth cannot mimic) is refused with one line.
import json
import shutil
import subprocess
from typing import Any

from stealth.constants import FIREWALL_TOOL_TIMEOUT_SECONDS
from stealth.errors import FirewallError
from stealth.server_config import UnauthMode

XT_TOOLS = {4: ("iptables-legacy", "iptables-nft", "iptables"), 6: ("ip6tables-legacy", "ip6tables-nft",
                                                                     "ip6tables")}
NFT_FAMILIES = {4: ("ip", "inet"), 6: ("ip6", "inet")}
XT_TABLES = ("filter", "mangle", "raw", "security", "nat")  # tables iptables-nft keeps in nftables
MAX_JUMP_DEPTH = 8


def _cannot_mimic(what: str) -> FirewallError:
    return FirewallError(f"this host answers unused ports with {what}, which stealth cannot mimic; "
                         "set unauth = \"drop\" or \"reset\" in server.toml")


def xtables_mode(lines: list[str], chain: str) -> UnauthMode | None:
    """DROP, RESET or None (no verdict: the packet goes on) for a TCP packet to an unused port, from
    `iptables -S` of the filter table. Unconditional rules decide and unconditional jumps are followed;
    conditional rules are taken not to match an unused port. Our own jump (`chain`) is skipped."""
    rules: dict[str, list[str]] = {}
    policy = "ACCEPT"
    for line in lines:
        parts = line.split()
        if line.startswith("-P INPUT "):
            policy = parts[2]
        elif line.startswith("-A ") and len(parts) > 1:
            rules.setdefault(parts[1], []).append(line)
    verdict = _xt_walk(rules, "INPUT", chain, 0)
    if verdict is not None:
        return verdict
    return UnauthMode.DROP if policy == "DROP" else None


def _xt_walk(rules: dict[str, list[str]], name: str, ours: str, depth: int) -> UnauthMode | None:
    for rule in rules.get(name, []):
        match, _, target = rule.partition(" -j ")
        if match.strip() not in (f"-A {name}", f"-A {name} -p tcp") or not target:
            continue
        target_name = target.split()[0]
        if target_name == ours:
            continue
        if target_name == "DROP":
            return UnauthMode.DROP
        if target_name == "ACCEPT":
            return UnauthMode.RESET
        if target_name == "REJECT":
            if "tcp-reset" in target:
                return UnauthMode.RESET
            raise _cannot_mimic(f"'{target}'")
        if target_name == "RETURN":
            return None
        if target_name in rules and depth < MAX_JUMP_DEPTH:
            verdict = _xt_walk(rules, target_name, ours, depth + 1)
            if verdict is not None:
                return verdict
    return None


def nft_mode(ruleset: dict[str, Any], family: int) -> UnauthMode | None:
    """The same judgement for native nftables base chains at the input hook (`nft -j list ruleset`).
    Chains that iptables-nft keeps (upper-case names in its tables) are judged by xtables_mode."""
    items = [next(iter(i.items())) for i in ruleset.get("nftables", []) if isinstance(i, dict) and i]
    chains = {(v["family"], v["table"], v["name"]): v for k, v in items if k == "chain"}
    rules: dict[tuple[str, str, str], list[list[Any]]] = {}
    for k, v in items:
        if k == "rule":
            rules.setdefault((v["family"], v["table"], v["chain"]), []).append(v.get("expr", []))
    verdicts = []
    for key, chain in chains.items():
        fam, table, name = key
        if chain.get("hook") != "input" or fam not in NFT_FAMILIES[family]:
            continue
        if fam in ("ip", "ip6") and table in XT_TABLES and name.isupper():
            continue
        verdict = _nft_walk(rules, key, 0)
        if verdict is None and chain.get("policy") == "drop":
            verdict = UnauthMode.DROP
        verdicts.append(verdict)
    if UnauthMode.DROP in verdicts:
        return UnauthMode.DROP
    return UnauthMode.RESET if UnauthMode.RESET in verdicts else None


def _nft_walk(rules: dict[tuple[str, str, str], list[list[Any]]], key: tuple[str, str, str],
              depth: int) -> UnauthMode | None:
    for exprs in rules.get(key, []):
        if any(_is_match(e) for e in exprs):
            continue
        for e in exprs:
            if "drop" in e:
                return UnauthMode.DROP
            if "accept" in e:
                return UnauthMode.RESET
            if "reject" in e:
                spec = e["reject"] or {}
                if spec.get("type") == "tcp reset":
                    return UnauthMode.RESET
                raise _cannot_mimic(f"nft 'reject {spec.get('type', 'icmp')}'")
            if "return" in e:
                return None
            jump = e.get("jump") or e.get("goto")
            if jump and depth < MAX_JUMP_DEPTH:
                verdict = _nft_walk(rules, (key[0], key[1], jump["target"]), depth + 1)
                if verdict is not None or "goto" in e:
                    return verdict
    return None


def _is_match(expr: dict[str, Any]) -> bool:
    """A rule with a match only applies to some packets; "meta l4proto tcp" alone still covers ours."""
    if "limit" in expr:
        return True
    match = expr.get("match")
    if match is None:
        return False
    left = match.get("left", {})
    return not (left == {"meta": {"key": "l4proto"}} and match.get("right") == "tcp")


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                timeout=FIREWALL_TOOL_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def host_unused_port_mode(family: int, chain: str) -> UnauthMode:
    """What this host does with a TCP packet to an unused port: "drop" if any firewall style drops it,
    else "reset" (Linux's own answer, or a REJECT with tcp-reset). Raises FirewallError when the host
    rejects with ICMP, or when no firewall tool can be read at all."""
    verdicts = []
    read_any = False
    seen: set[str] = set()
    for tool in XT_TOOLS[family]:
        out = _run([tool, "-w", "-t", "filter", "-S"])
        if out is None or out in seen:  # plain iptables is one of the two others
            continue
        seen.add(out)
        read_any = True
        verdicts.append(xtables_mode(out.splitlines(), chain))
    nft = _run(["nft", "-j", "list", "ruleset"])
    if nft is not None:
        read_any = True
        try:
            verdicts.append(nft_mode(json.loads(nft), family))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FirewallError(f"cannot read 'nft -j list ruleset' to tell drop from reset: {e!r}") from None
    if not read_any:
        raise FirewallError("cannot read this host's firewall (no iptables or nft found on PATH) to tell "
                            "drop from reset; install iptables or set unauth in server.toml")
    return UnauthMode.DROP if UnauthMode.DROP in verdicts else UnauthMode.RESET
