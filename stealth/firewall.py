# Why: the only code that touches iptables. plan_install()/plan_remove() are pure: they return argv
# lists (and iptables-restore input) that a snapshot test pins; apply() runs them without a shell.
# Our rules live in chains of our own, filled atomically with iptables-restore --noflush, so a reinstall
# never leaves a protected port open for an instant and no rule of anyone else is touched.
#
# Layout, per family (iptables and ip6tables):
#   mangle INPUT  -p tcp -> STEALTH-q: other ports RETURN; loopback RETURN; ct-marked -> ACCEPT;
#                   bare SYN from a source that knocked successfully before -> NFQUEUE;
#                   bare SYN over the per-prefix rate (hashlimit) -> RETURN (not queued: unauthenticated);
#                   bare SYN -> NFQUEUE (no --queue-bypass: fail closed)
#   filter INPUT  -p tcp -> STEALTH-q: other ports RETURN; loopback RETURN; packet-marked (the SYN the
#                   daemon accepted) -> CONNMARK save; ct-marked -> ACCEPT; then what the host does for
#                   an unused port: DROP ("drop" mode), or REJECT tcp-reset for anything but a RST
#                   ("reset" mode), made by the kernel, so the reply is the kernel's own closed-port RST.
# NFQUEUE's accept ends only the mangle table, so the CONNMARK save must sit in the later filter table.
# The daemon rejects a SYN by dropping it (drop mode) or by accepting it *unmarked* (reset mode), which
# sends it on to the filter chain's REJECT; an accepted knock is the only packet that carries the mark.
# The rate limit's exemption list (xt_recent) holds sources that knocked successfully, so junk spoofed
# from a real client's address cannot exhaust that client's prefix; the daemon adds to it on accept.
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stealth.constants import GOOD_SOURCE_SECONDS
from stealth.errors import FirewallError

FAMILIES = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}


UNAUTH_MODES = ("drop", "reset")


@dataclass(frozen=True)
class RuleConfig:
    queue: int
    ports: tuple[int, ...]
    mark: int
    mode: str = "drop"  # what unauthenticated packets get: "drop" or "reset"
    syn_rate_per_second: int = 100  # per source prefix, for sources that never knocked successfully
    syn_burst: int = 200
    prefix_v4: int = 24
    prefix_v6: int = 64
    good_seconds: int = GOOD_SOURCE_SECONDS
    workers: int = 1  # queues queue .. queue+workers-1, spread by flow (--queue-balance)

    def __post_init__(self) -> None:
        if self.mode not in UNAUTH_MODES:
            raise ValueError(f"mode must be one of {UNAUTH_MODES}")

    @property
    def chain(self) -> str:
        return f"STEALTH-{self.queue}"

    @property
    def queue_spec(self) -> str:
        return str(self.queue) if self.workers == 1 else f"{self.queue}:{self.queue + self.workers - 1}"

    @property
    def good_list(self) -> str:
        """xt_recent list of sources that knocked successfully (/proc/net/xt_recent/<name>)."""
        return f"stealth-good-{self.queue}"


@dataclass(frozen=True)
class Step:
    """Run argv (feeding `stdin`). With `unless`, skip when that check command succeeds. With
    `repeat`, run until it fails (deleting every copy of a rule). `tolerate` ignores failure."""

    argv: tuple[str, ...]
    stdin: str | None = None
    unless: tuple[str, ...] | None = None
    repeat: bool = False
    tolerate: bool = False


def _chain_rules(cfg: RuleConfig, table: str, family: int) -> list[str]:
    ports = ",".join(str(p) for p in cfg.ports)
    mark = f"0x{cfg.mark:x}/0x{cfg.mark:x}"
    ch = cfg.chain
    head = [
        f"-A {ch} -p tcp -m multiport ! --dports {ports} -j RETURN",
        f"-A {ch} -i lo -j RETURN",
    ]
    if table == "mangle" and cfg.mode == "reset":
        # Timing: the protected port's RST takes a trip through the queue. Send bare SYNs to every other
        # port that has no socket (whose RST the kernel makes) through the same trip, so both RTTs match.
        head = [
            f"-A {ch} -i lo -j RETURN",
            f"-A {ch} -p tcp -m multiport ! --dports {ports} ! --syn -j RETURN",
            f"-A {ch} -p tcp -m multiport ! --dports {ports} -m socket -j RETURN",
        ]
    if table == "mangle":
        queue = (f"-j NFQUEUE --queue-num {cfg.queue}" if cfg.workers == 1
                 else f"-j NFQUEUE --queue-balance {cfg.queue_spec}")
        prefix = cfg.prefix_v4 if family == 4 else cfg.prefix_v6
        body = [
            f"-A {ch} -m connmark --mark {mark} -j ACCEPT",
            f"-A {ch} -p tcp --syn -m recent --name {cfg.good_list} --rcheck --seconds {cfg.good_seconds} "
            f"{queue}",
            f"-A {ch} -p tcp --syn -m hashlimit --hashlimit-above {cfg.syn_rate_per_second}/sec "
            f"--hashlimit-burst {cfg.syn_burst} --hashlimit-mode srcip --hashlimit-srcmask {prefix} "
            f"--hashlimit-name stealth{family}-{cfg.queue} -j RETURN",
            f"-A {ch} -p tcp --syn {queue}",
        ]
    else:
        body = [
            f"-A {ch} -m mark --mark {mark} -j CONNMARK --save-mark --nfmask 0x{cfg.mark:x} "
            f"--ctmask 0x{cfg.mark:x}",
            f"-A {ch} -m connmark --mark {mark} -j ACCEPT",
        ]
        if cfg.mode == "reset":
            body.append(f"-A {ch} -p tcp ! --tcp-flags RST RST -j REJECT --reject-with tcp-reset")
        body.append(f"-A {ch} -j DROP")
    return head + body


def restore_input(cfg: RuleConfig, family: int = 4) -> str:
    lines = []
    for table in ("mangle", "filter"):
        lines += [f"*{table}", f":{cfg.chain} - [0:0]", *_chain_rules(cfg, table, family), "COMMIT"]
    return "\n".join(lines) + "\n"


def _jump(tool: str, table: str, op: str, cfg: RuleConfig) -> tuple[str, ...]:
    pos = ("1",) if op == "-I" else ()
    return (tool, "-w", "-t", table, op, "INPUT", *pos, "-p", "tcp", "-j", cfg.chain)


def plan_install(cfg: RuleConfig, family: int) -> list[Step]:
    tool, restore = FAMILIES[family]
    steps = [Step((restore, "-w", "--noflush"), stdin=restore_input(cfg, family))]
    for table in ("mangle", "filter"):
        steps.append(Step(_jump(tool, table, "-I", cfg), unless=_jump(tool, table, "-C", cfg)))
    return steps


def plan_remove(cfg: RuleConfig, family: int) -> list[Step]:
    tool, _ = FAMILIES[family]
    steps = [Step(_jump(tool, t, "-D", cfg), repeat=True, tolerate=True) for t in ("mangle", "filter")]
    for table in ("mangle", "filter"):
        steps.append(Step((tool, "-w", "-t", table, "-F", cfg.chain), tolerate=True))
        steps.append(Step((tool, "-w", "-t", table, "-X", cfg.chain), tolerate=True))
    return steps


def available_families() -> list[int]:
    """IPv4 always (it is required); IPv6 when the kernel has it and ip6tables is installed."""
    families = [4]
    tools = shutil.which("ip6tables") and shutil.which("ip6tables-restore")
    if Path("/proc/net/if_inet6").exists() and tools:
        families.append(6)
    return families


def _run(argv: tuple[str, ...], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise FirewallError(f"{argv[0]} is not installed (apt install iptables)") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{argv[0]} did not finish within 30 s") from None


def apply(steps: list[Step]) -> None:
    for step in steps:
        if step.unless is not None and _run(step.unless).returncode == 0:
            continue
        for _ in range(1000):
            result = _run(step.argv, step.stdin)
            if result.returncode != 0:
                if step.tolerate or (step.repeat and _ != 0):
                    break
                detail = (result.stderr.strip().splitlines() or ["no message"])[-1]
                raise FirewallError(f"{' '.join(step.argv)} failed: {detail}")
            if not step.repeat:
                break


def install(cfgs: dict[int, RuleConfig]) -> None:
    """Install for every family, or (on any failure) remove what was installed and raise."""
    try:
        for family, cfg in cfgs.items():
            apply(plan_install(cfg, family))
    except FirewallError:
        remove(cfgs)
        raise


def remove(cfgs: dict[int, RuleConfig]) -> None:
    for family, cfg in cfgs.items():
        apply(plan_remove(cfg, family))


def host_unused_port_mode(family: int, chain: str) -> str:
    """What this host does with a TCP packet to an unused port, read from its filter INPUT chain
    (ignoring our own jump): "drop" when the policy is DROP or an unconditional DROP ends the chain,
    otherwise "reset" (the kernel answers a closed port with RST, or a catch-all REJECT tcp-reset)."""
    tool = FAMILIES[family][0]
    result = _run((tool, "-w", "-S", "INPUT"))
    if result.returncode != 0:
        raise FirewallError(f"{tool} -S INPUT failed: {result.stderr.strip()}")
    return unused_port_mode_from_rules(result.stdout.splitlines(), chain)


def unused_port_mode_from_rules(lines: list[str], chain: str) -> str:
    """Pure part of host_unused_port_mode, for tests."""
    rules = [ln for ln in lines if ln.startswith("-A INPUT") and f"-j {chain}" not in ln]
    catch_all = [r for r in rules if r.split(" -j ")[0].strip() in ("-A INPUT", "-A INPUT -p tcp")]
    for rule in catch_all:
        target = rule.split(" -j ", 1)[1]
        if target.startswith("DROP"):
            return "drop"
        if target.startswith("REJECT"):
            if "tcp-reset" in target:
                return "reset"
            raise FirewallError(
                f"this host answers unused ports with '{target}', which stealth cannot mimic; "
                "set unauth = \"drop\" or \"reset\" in server.toml"
            )
    if "-P INPUT DROP" in lines:
        return "drop"
    return "reset"


@dataclass(frozen=True)
class Snapshot:
    """Our chains' contents (restore syntax) per table for one family, or None where absent."""

    family: int
    chains: dict[str, list[str] | None]


def snapshot(cfg: RuleConfig, family: int) -> Snapshot:
    tool = FAMILIES[family][0]
    chains: dict[str, list[str] | None] = {}
    for table in ("mangle", "filter"):
        result = _run((tool, "-w", "-t", table, "-S", cfg.chain))
        lines = result.stdout.splitlines()
        chains[table] = [ln for ln in lines if ln.startswith("-A ")] if result.returncode == 0 else None
    return Snapshot(family, chains)


def restore(cfg: RuleConfig, snap: Snapshot) -> None:
    """Put our chains back exactly as snapshotted (or remove them if they did not exist)."""
    if all(rules is None for rules in snap.chains.values()):
        apply(plan_remove(cfg, snap.family))
        return
    tool, restore_tool = FAMILIES[snap.family]
    lines = []
    for table, rules in snap.chains.items():
        lines += [f"*{table}", f":{cfg.chain} - [0:0]", *(rules or []), "COMMIT"]
    steps = [Step((restore_tool, "-w", "--noflush"), stdin="\n".join(lines) + "\n")]
    steps += [Step(_jump(tool, t, "-I", cfg), unless=_jump(tool, t, "-C", cfg)) for t in ("mangle", "filter")]
    apply(steps)
