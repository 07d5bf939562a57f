# Why: changing the rules of a remote server is how administrators lock themselves out. Like
# iptables-apply, `stealth server rules apply` installs the rules server.toml now describes, then rolls
# them back automatically unless the change is confirmed (from a new session: `stealth server rules
# confirm`, or by answering on the terminal) within the given time.
import secrets
import select
import sys
import time
from collections.abc import Callable

from stealth.errors import StealthError
from stealth.firewall import RuleConfig, Snapshot, available_families, install, remove, restore, snapshot
from stealth.rules_plan import rules_for
from stealth.server_state import ServerState
from stealth.store import atomic_write, read_bytes

POLL_SECONDS = 0.2


def confirm(state: ServerState) -> str:
    """Confirm the change a running `rules apply` is waiting for."""
    path = state.dir / "rules.pending"
    if not path.exists():
        raise StealthError(f"{path}: no rule change is waiting for confirmation")
    nonce = read_bytes(path)
    atomic_write(state.dir / "rules.confirmed", nonce)
    return nonce.decode(errors="replace")


def running_layout(state: ServerState) -> tuple[int, int] | None:
    """(queue, workers) of the server running on this state directory, from its status file."""
    alive, status = state.daemon_state()
    if alive not in ("running", "stalled") or status is None:
        return None
    try:
        return int(status["queue"]), int(status.get("workers", 1))
    except (KeyError, TypeError, ValueError):
        return None


def remove_rules(state: ServerState) -> list[str]:
    """Remove our chains and jumps for every family; refused while a server runs on this state
    directory (its check would put them back within a second). Returns what was done, as lines."""
    running = running_layout(state)
    if running is not None:
        raise StealthError(f"{state.dir}: the server is running; stop it first, then remove the rules")
    config = state.load_config()
    families = available_families()
    last = state.read_status() or {}  # the queue the last run used (--queue may override server.toml)
    queue = last["queue"] if isinstance(last.get("queue"), int) else config.queue
    rules = {f: RuleConfig(queue, config.ports, config.mark) for f in families}
    remove(rules)
    ports = ",".join(map(str, config.ports))
    return [f"removed chain {rules[4].chain} and its jumps (mangle PREROUTING, filter INPUT) for "
            f"{', '.join('IPv4' if f == 4 else 'IPv6' for f in families)}",
            f"ports {ports} now get what the host gives any port without a socket; the services behind "
            "them stay on loopback and no knock reaches them until 'stealth server run' again"]


def apply_with_rollback(
    state: ServerState, confirm_within: float, queue: int | None, say: Callable[[str], None]
) -> bool:
    """Install the rules; return True if confirmed in time, else roll back and return False.
    The queue layout (queue number, workers) is the running server's, so its queues stay fed."""
    running = running_layout(state)
    workers = running[1] if running else 1
    config = state.load_config()
    queue_num = queue if queue is not None else running[0] if running else config.queue
    families = available_families()
    rules: dict[int, RuleConfig] = rules_for(config, queue_num, workers, families)
    before: dict[int, Snapshot] = {f: snapshot(rules[f], f) for f in families}
    nonce = secrets.token_hex(8).encode()
    confirmed_path = state.dir / "rules.confirmed"
    pending = state.dir / "rules.pending"
    confirmed_path.unlink(missing_ok=True)
    atomic_write(pending, nonce)
    try:
        install(rules)
        say(f"new rules installed; confirm within {confirm_within:g} s with "
            f"'stealth server rules confirm --state-dir {state.dir}'"
            + (" or by typing yes here" if sys.stdin.isatty() else "") + ", or they are rolled back")
        deadline = time.monotonic() + confirm_within
        while time.monotonic() < deadline:
            if confirmed_path.exists() and read_bytes(confirmed_path) == nonce:
                return True
            if sys.stdin.isatty():
                ready, _, _ = select.select([sys.stdin], [], [], POLL_SECONDS)
                if ready and sys.stdin.readline().strip().lower() in ("y", "yes"):
                    return True
            else:
                time.sleep(POLL_SECONDS)
        for family, snap in before.items():
            restore(rules[family], snap)
        return False
    finally:
        pending.unlink(missing_ok=True)
        confirmed_path.unlink(missing_ok=True)
