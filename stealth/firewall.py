# Why: the only code that touches iptables. plan_install()/plan_remove() are pure: they return argv
# lists (and iptables-restore input) that a snapshot test pins; apply() runs them without a shell.
# Our rules live in chains of our own, filled atomically with iptables-restore --noflush, so a reinstall
# never leaves a protected port open for an instant and no rule of anyone else is touched.
#
# Layout, per family (iptables and ip6tables):
#   mangle INPUT  -p tcp -> STEALTH-q: other ports RETURN; loopback RETURN; ct-marked -> ACCEPT;
#                                      bare SYN -> NFQUEUE (no --queue-bypass: fail closed)
#   filter INPUT  -p tcp -> STEALTH-q: other ports RETURN; loopback RETURN; packet-marked (the SYN the
#                                      daemon accepted) -> CONNMARK save; ct-marked -> ACCEPT; else DROP
# NFQUEUE's accept ends only the mangle table, so the CONNMARK save must sit in the later filter table.
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stealth.errors import FirewallError

FAMILIES = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}


@dataclass(frozen=True)
class RuleConfig:
    queue: int
    ports: tuple[int, ...]
    mark: int

    @property
    def chain(self) -> str:
        return f"STEALTH-{self.queue}"


@dataclass(frozen=True)
class Step:
    """Run argv (feeding `stdin`). With `unless`, skip when that check command succeeds. With
    `repeat`, run until it fails (deleting every copy of a rule). `tolerate` ignores failure."""

    argv: tuple[str, ...]
    stdin: str | None = None
    unless: tuple[str, ...] | None = None
    repeat: bool = False
    tolerate: bool = False


def _chain_rules(cfg: RuleConfig, table: str) -> list[str]:
    ports = ",".join(str(p) for p in cfg.ports)
    mark = f"0x{cfg.mark:x}/0x{cfg.mark:x}"
    head = [
        f"-A {cfg.chain} -p tcp -m multiport ! --dports {ports} -j RETURN",
        f"-A {cfg.chain} -i lo -j RETURN",
    ]
    if table == "mangle":
        body = [
            f"-A {cfg.chain} -m connmark --mark {mark} -j ACCEPT",
            f"-A {cfg.chain} -p tcp --syn -j NFQUEUE --queue-num {cfg.queue}",
        ]
    else:
        body = [
            f"-A {cfg.chain} -m mark --mark {mark} -j CONNMARK --save-mark "
            f"--nfmask 0x{cfg.mark:x} --ctmask 0x{cfg.mark:x}",
            f"-A {cfg.chain} -m connmark --mark {mark} -j ACCEPT",
            f"-A {cfg.chain} -j DROP",
        ]
    return head + body


def restore_input(cfg: RuleConfig) -> str:
    lines = []
    for table in ("mangle", "filter"):
        lines += [f"*{table}", f":{cfg.chain} - [0:0]", *_chain_rules(cfg, table), "COMMIT"]
    return "\n".join(lines) + "\n"


def _jump(tool: str, table: str, op: str, cfg: RuleConfig) -> tuple[str, ...]:
    pos = ("1",) if op == "-I" else ()
    return (tool, "-w", "-t", table, op, "INPUT", *pos, "-p", "tcp", "-j", cfg.chain)


def plan_install(cfg: RuleConfig, family: int) -> list[Step]:
    tool, restore = FAMILIES[family]
    steps = [Step((restore, "-w", "--noflush"), stdin=restore_input(cfg))]
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


def install(cfg: RuleConfig, families: list[int]) -> None:
    """Install for every family, or (on any failure) remove what was installed and raise."""
    try:
        for family in families:
            apply(plan_install(cfg, family))
    except FirewallError:
        remove(cfg, families)
        raise


def remove(cfg: RuleConfig, families: list[int]) -> None:
    for family in families:
        apply(plan_remove(cfg, family))
