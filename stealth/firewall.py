# Why: the only code that touches iptables. plan_install()/plan_remove() are pure: they return argv
# lists (and iptables-restore input) that a snapshot test pins; apply() runs them without a shell.
# Our rules live in chains of our own, filled atomically with iptables-restore --noflush, so a reinstall
# never leaves a protected port open for an instant and no rule of anyone else is touched.
#
# A protected port has no socket: the service listens on loopback (see backend.py). Layout, per family:
#   mangle PREROUTING -p tcp -> STEALTH-q: other ports RETURN; loopback RETURN;
#                   packet-marked (the SYN the daemon accepted) -> CONNMARK save, then TPROXY to the
#                   daemon's transparent listener on loopback (accept_port);
#                   a bare SYN of a ct-marked connection (the kernel's retransmission of an accepted SYN,
#                   while conntrack still holds its handshake) -> TPROXY too: to its request socket, or to
#                   the listener again if that socket already gave up;
#                   ct-marked (the rest of an accepted connection) -> ACCEPT;
#                   bare SYN from a source that knocked successfully before -> NFQUEUE;
#                   bare SYN over the per-prefix rate (hashlimit) -> unauthenticated, not queued;
#                   bare SYN -> NFQUEUE (no --queue-bypass: fail closed);
#                   drop mode: everything else -> DROP. Reset mode: everything else goes on to the
#                   kernel's TCP stack, which finds no socket and answers exactly as for an unused port.
#   mangle OUTPUT -p tcp -> STEALTH-q-out: an RST the server sends on an accepted connection clears the
#                   connection's mark. Conntrack does not reopen a connection the *server* reset when a
#                   new SYN comes on its tuple, so without this a bare SYN from the same address and port
#                   would ride the old mark past the daemon for conntrack's 10 s CLOSE timeout.
#   filter INPUT  -p tcp -> STEALTH-q: other ports RETURN; loopback RETURN; ct-marked -> ACCEPT (so a host
#                   whose own INPUT chain drops the port still lets the accepted connection in).
# The daemon accepts a knock with verdict REPEAT and the mark: the mangle chain runs again and the mark
# sends the SYN to TPROXY (an NFQUEUE accept would end the table before it). It rejects a SYN with DROP
# (drop mode) or an unmarked accept (reset mode). Neither relies on a later rule: if our rules vanish,
# an unmarked SYN still meets no socket. No packet to an unprotected port passes through the daemon.
# The rate limit's exemption list (xt_recent) holds sources that knocked successfully, so junk spoofed
# from a real client's address cannot exhaust that client's prefix; the daemon adds to it on accept.
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stealth.backend import LOOPBACK
from stealth.constants import (
    CAP_NET_ADMIN_BIT,
    CAP_NET_RAW_BIT,
    DEFAULT_ACCEPT_PORT,
    DEFAULT_PREFIX_V4_BITS,
    DEFAULT_PREFIX_V6_BITS,
    DEFAULT_SYN_BURST,
    DEFAULT_SYN_RATE_PER_SECOND,
    FIREWALL_TOOL_TIMEOUT_SECONDS,
    GOOD_SOURCE_SECONDS,
    SBIN_DIRS,
)
from stealth.errors import FirewallError
from stealth.server_config import UnauthMode

FAMILIES = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}
# (table, built-in chain that jumps to ours, our chain's suffix), in install order
HOOKS = (("mangle", "PREROUTING", ""), ("mangle", "OUTPUT", "-out"), ("filter", "INPUT", ""))
TABLES = ("mangle", "filter")


UNAUTH_MODES = (UnauthMode.DROP, UnauthMode.RESET)  # AUTO is decided per family before the rules are made


@dataclass(frozen=True)
class RuleConfig:
    """Everything one family's rules depend on: the queue (and how many workers share it), the protected
    ports, the accept mark, the unauth mode (DROP or RESET; ValueError otherwise), the per-prefix SYN rate
    limit and the daemon's loopback listener."""

    queue: int
    ports: tuple[int, ...]
    mark: int
    mode: UnauthMode = UnauthMode.DROP  # what unauthenticated packets get: DROP or RESET
    # per source prefix, for sources that never knocked successfully:
    syn_rate_per_second: int = DEFAULT_SYN_RATE_PER_SECOND
    syn_burst: int = DEFAULT_SYN_BURST
    prefix_v4: int = DEFAULT_PREFIX_V4_BITS
    prefix_v6: int = DEFAULT_PREFIX_V6_BITS
    good_seconds: int = GOOD_SOURCE_SECONDS
    workers: int = 1  # queues queue .. queue+workers-1, spread by flow (--queue-balance)
    accept_port: int = DEFAULT_ACCEPT_PORT  # the daemon's transparent listener on loopback

    def __post_init__(self) -> None:
        if self.mode not in UNAUTH_MODES:
            raise ValueError(f"mode must be one of {tuple(str(m) for m in UNAUTH_MODES)}")

    @property
    def chain(self) -> str:
        """Our chains' name, STEALTH-<queue> (with "-out" for the mangle OUTPUT one)."""
        return f"STEALTH-{self.queue}"

    @property
    def queue_spec(self) -> str:
        """The queue argument: "N", or "N:M" for --queue-balance over the workers' queues."""
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


def _chain_rules(cfg: RuleConfig, table: str, family: int, suffix: str = "") -> list[str]:
    ports = ",".join(str(p) for p in cfg.ports)
    mark = f"0x{cfg.mark:x}/0x{cfg.mark:x}"
    ch = cfg.chain + suffix
    if suffix == "-out":
        return [
            f"-A {ch} -p tcp -m multiport ! --sports {ports} -j RETURN",
            f"-A {ch} -o lo -j RETURN",
            f"-A {ch} -p tcp -m tcp --tcp-flags RST RST -m connmark --mark {mark} -j CONNMARK --set-xmark "
            f"0x0/0x{cfg.mark:x}",
        ]
    head = [
        f"-A {ch} -p tcp -m multiport ! --dports {ports} -j RETURN",
        f"-A {ch} -i lo -j RETURN",
    ]
    if table == "filter":
        return [*head, f"-A {ch} -m connmark --mark {mark} -j ACCEPT"]
    # PREROUTING also sees traffic this host forwards (containers, a router): port 22 of other hosts is
    # not ours to protect, so only packets for this host's own addresses go on
    head.append(f"-A {ch} -m addrtype ! --dst-type LOCAL -j RETURN")
    queue = (f"-j NFQUEUE --queue-num {cfg.queue}" if cfg.workers == 1
             else f"-j NFQUEUE --queue-balance {cfg.queue_spec}")
    prefix = cfg.prefix_v4 if family == 4 else cfg.prefix_v6
    unauth = "DROP" if cfg.mode == UnauthMode.DROP else "RETURN"
    tproxy = f"-j TPROXY --on-port {cfg.accept_port} --on-ip {LOOPBACK[family]} --tproxy-mark {mark}"
    body = [
        f"-A {ch} -m mark --mark {mark} -j CONNMARK --save-mark --nfmask 0x{cfg.mark:x} "
        f"--ctmask 0x{cfg.mark:x}",
        f"-A {ch} -p tcp -m mark --mark {mark} {tproxy}",
        f"-A {ch} -p tcp --syn -m connmark --mark {mark} {tproxy}",
        f"-A {ch} -m connmark --mark {mark} -j ACCEPT",
        f"-A {ch} -p tcp --syn -m recent --name {cfg.good_list} --rcheck --seconds {cfg.good_seconds} "
        f"{queue}",
        f"-A {ch} -p tcp --syn -m hashlimit --hashlimit-above {cfg.syn_rate_per_second}/sec "
        f"--hashlimit-burst {cfg.syn_burst} --hashlimit-mode srcip --hashlimit-srcmask {prefix} "
        f"--hashlimit-name stealth{family}-{cfg.queue} -j {unauth}",
        f"-A {ch} -p tcp --syn {queue}",
    ]
    if cfg.mode == UnauthMode.DROP:
        body.append(f"-A {ch} -j DROP")
    return head + body


def restore_input(cfg: RuleConfig, family: int = 4) -> str:
    """iptables-restore input that creates and fills our chains in the mangle and filter tables for `family`;
    the jumps to them are separate steps (plan_install). Pure: a snapshot test pins it."""
    lines = []
    for table in TABLES:
        hooks = [(hook, suffix) for t, hook, suffix in HOOKS if t == table]
        lines += [f"*{table}", *(f":{cfg.chain}{suffix} - [0:0]" for _, suffix in hooks)]
        for _, suffix in hooks:
            lines += _chain_rules(cfg, table, family, suffix)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _jump(tool: str, table: str, hook: str, suffix: str, op: str, cfg: RuleConfig) -> tuple[str, ...]:
    pos = ("1",) if op == "-I" else ()
    return (tool, "-w", "-t", table, op, hook, *pos, "-p", "tcp", "-j", cfg.chain + suffix)


def _jumps(tool: str, cfg: RuleConfig) -> list[Step]:
    """Insert each jump to our chains unless it is there already."""
    return [Step(_jump(tool, t, h, x, "-I", cfg), unless=_jump(tool, t, h, x, "-C", cfg))
            for t, h, x in HOOKS]


def _legacy_jump(tool: str, cfg: RuleConfig) -> Step:
    """Versions before the TPROXY layout jumped to the mangle chain from INPUT; its new rules are only
    valid in PREROUTING, so that jump goes first."""
    return Step((tool, "-w", "-t", "mangle", "-D", "INPUT", "-p", "tcp", "-j", cfg.chain), repeat=True,
                tolerate=True)


def plan_install(cfg: RuleConfig, family: int) -> list[Step]:
    """The steps that install our rules for `family` (pure): remove an older layout's jump, fill our chains
    atomically (iptables-restore --noflush), then insert each jump unless it is there. Applying them again
    changes nothing."""
    tool, restore = FAMILIES[family]
    steps = [_legacy_jump(tool, cfg), Step((restore, "-w", "--noflush"), stdin=restore_input(cfg, family))]
    return steps + _jumps(tool, cfg)


def plan_remove(cfg: RuleConfig, family: int) -> list[Step]:
    """The steps that remove our jumps and chains for `family` (pure); each tolerates what is already gone."""
    tool, _ = FAMILIES[family]
    steps = [Step(_jump(tool, t, h, x, "-D", cfg), repeat=True, tolerate=True) for t, h, x in HOOKS]
    steps.append(_legacy_jump(tool, cfg))
    for table, _, suffix in HOOKS:
        steps.append(Step((tool, "-w", "-t", table, "-F", cfg.chain + suffix), tolerate=True))
        steps.append(Step((tool, "-w", "-t", table, "-X", cfg.chain + suffix), tolerate=True))
    return steps


def available_families() -> list[int]:
    """IPv4 always (it is required); IPv6 whenever the kernel has it. A host with IPv6 but without
    ip6tables is refused: it would leave every protected port's IPv6 side without a gate."""
    if not Path("/proc/net/if_inet6").exists():
        return [4]
    missing = [t for t in FAMILIES[6] if shutil.which(t) is None]
    if missing:
        raise FirewallError(f"this host has IPv6 but {missing[0]} was not found on PATH; install it "
                            "(apt install iptables) or disable IPv6, or stealth cannot gate IPv6 knocks")
    return [4, 6]


def missing_rules(cfg: RuleConfig, family: int) -> str | None:
    """None when our jumps and chains are all in place, else what is missing (someone flushed the
    ruleset, restored an older one, or deleted a rule). Only presence is checked: `rules apply` may
    legitimately install other contents."""
    tool = FAMILIES[family][0]
    saved = {}
    for table in TABLES:
        result = _run((f"{tool}-save", "-t", table))
        saved[table] = result.stdout.splitlines() if result.returncode == 0 else []
    for table, hook, suffix in HOOKS:
        chain, lines = cfg.chain + suffix, saved[table]
        if f"-A {hook} -p tcp -j {chain}" not in lines:
            return f"{tool} {table} {hook} has no jump to {chain}"
        if not any(line.startswith(f"-A {chain} ") for line in lines):
            return f"{tool} {table} chain {chain} is missing or empty"
    return None


def effective_caps() -> int:
    """This process's effective capability set (CapEff of /proc/self/status), as a bit mask."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return -1 if os.geteuid() == 0 else 0


def locate(tool: str) -> str | None:
    """Where `tool` is: on PATH, else in /usr/sbin or /sbin (not on a normal user's PATH)."""
    found = shutil.which(tool)
    if found is not None:
        return found
    return next((str(Path(d) / tool) for d in SBIN_DIRS if os.access(Path(d) / tool, os.X_OK)), None)


def cannot_run(tool: str) -> FirewallError:
    """Why `tool` cannot be used, in one line: not installed, not root, or not on PATH."""
    where = locate(tool)
    if where is None:
        return FirewallError(f"{tool} is not installed (apt install iptables)")
    if not effective_caps() >> CAP_NET_ADMIN_BIT & 1:
        return FirewallError(f"{tool} needs root (or CAP_NET_ADMIN): this process runs as uid {os.geteuid()} "
                             f"without it ({where} is installed)")
    return FirewallError(f"{tool} is not on PATH: it is {where}; add {Path(where).parent} to PATH")


def require_privileges() -> None:
    """What `stealth server run` needs to keep every feature, checked before anything is touched; else
    one line. CAP_NET_ADMIN: NFQUEUE, netlink, iptables-nft. CAP_NET_RAW: iptables-legacy opens a raw
    socket (ours, and reading the host's legacy rules for --unauth auto). uid 0: the kernel makes the
    rate-limit exemption list (/proc/net/xt_recent/stealth-good-*) root's, mode 0600."""
    caps = effective_caps()
    if not caps >> CAP_NET_ADMIN_BIT & 1:
        raise cannot_run("iptables")
    if not caps >> CAP_NET_RAW_BIT & 1:
        raise FirewallError("stealth server run needs CAP_NET_RAW as well as CAP_NET_ADMIN: iptables-legacy "
                            "opens a raw socket, and the host's legacy rules must be read to answer like it")
    if os.geteuid() != 0:
        raise FirewallError(f"stealth server run needs uid 0 (capabilities may be bounded to CAP_NET_ADMIN "
                            f"and CAP_NET_RAW): as uid {os.geteuid()} it cannot write the rate-limit "
                            "exemption list, which the kernel makes root's (/proc/net/xt_recent)")


def _run(argv: tuple[str, ...], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    if not effective_caps() >> CAP_NET_ADMIN_BIT & 1:
        raise cannot_run(argv[0])
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=FIREWALL_TOOL_TIMEOUT_SECONDS, check=False)
    except FileNotFoundError:
        raise cannot_run(argv[0]) from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{argv[0]} did not finish within {FIREWALL_TOOL_TIMEOUT_SECONDS} s") from None


def apply(steps: list[Step]) -> None:
    """Run `steps` in order, without a shell. Raises FirewallError, with the tool's last line of stderr, at
    the first step that fails and does not tolerate it; the steps before it stay applied."""
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
    """Remove our jumps and chains for every family in `cfgs`. A rule already gone is fine; FirewallError only
    when iptables cannot run at all (missing, no privilege, timeout)."""
    for family, cfg in cfgs.items():
        apply(plan_remove(cfg, family))


@dataclass(frozen=True)
class Snapshot:
    """Our chains' contents (restore syntax) per table for one family, or None where absent."""

    family: int
    chains: dict[tuple[str, str], list[str] | None]  # (table, chain) -> rules


def snapshot(cfg: RuleConfig, family: int) -> Snapshot:
    """Our chains' rules as they are now for `family` (None for a chain that does not exist), for restore().
    Reads only; FirewallError when iptables cannot run."""
    tool = FAMILIES[family][0]
    chains: dict[tuple[str, str], list[str] | None] = {}
    for table, _, suffix in HOOKS:
        chain = cfg.chain + suffix
        result = _run((tool, "-w", "-t", table, "-S", chain))
        lines = result.stdout.splitlines()
        ok = result.returncode == 0
        chains[table, chain] = [ln for ln in lines if ln.startswith("-A ")] if ok else None
    return Snapshot(family, chains)


def restore(cfg: RuleConfig, snap: Snapshot) -> None:
    """Put our chains back exactly as snapshotted (or remove them if they did not exist)."""
    if all(rules is None for rules in snap.chains.values()):
        apply(plan_remove(cfg, snap.family))
        return
    tool, restore_tool = FAMILIES[snap.family]
    lines = []
    for table in TABLES:
        mine = {chain: rules for (t, chain), rules in snap.chains.items() if t == table}
        lines += [f"*{table}", *(f":{chain} - [0:0]" for chain in mine)]
        lines += [rule for rules in mine.values() for rule in rules or []]
        lines.append("COMMIT")
    steps = [Step((restore_tool, "-w", "--noflush"), stdin="\n".join(lines) + "\n")]
    apply(steps + _jumps(tool, cfg))
