# Why: the server's files in one place. server.toml (identity, protected ports, window, queue) lives in
# the config directory (/etc/stealth); everything else in the state directory (/var/lib/stealth):
# clients.jsonl (enrolled clients with their keys, 0600: one JSON object per line, streamed, because a
# million clients must load in seconds and TOML parsing took 75 ms per 1,000), counters.json plus
# counters.log (each client's highest accepted counter, written only by the running server, before its
# verdict; see counterlog.py), status.json (drop counts) and accepts.* (each client's last accepted
# knock, see accepts.py). A state directory named without a config directory keeps its own server.toml
# (the layout before /etc/stealth, and every test's), and one that still holds a server.toml is read from
# there. server.toml's schema is server_config.py's, clients.jsonl's administration enrollment.py's
# (inherited here, so callers say state.add_client(...)).
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stealth.clients_file import CLIENTS_HEADER
from stealth.constants import (
    CONFIG_DIR_ENV,
    DAEMON_STALE_SECONDS,
    DEFAULT_CONFIG_DIR,
    DEFAULT_STATE_DIR,
    STATE_DIR_ENV,
    STATE_DIR_MODE,
    SYSTEMD_CONFIG_DIR_ENV,
    SYSTEMD_STATE_DIR_ENV,
)
from stealth.counterlog import CounterLog
from stealth.enrollment import Enrollment
from stealth.errors import ConfigError
from stealth.server_config import ServerConfig, check_config
from stealth.store import atomic_write, ensure_dir, locked, read_json, read_toml, write_json, write_toml


def first_dir(value: str | None) -> Path | None:
    """A directory from an environment variable: unset or empty is None; of systemd's lists (several
    StateDirectory= entries, colon-separated), the first."""
    first = (value or "").split(":")[0]
    return Path(first) if first else None


def resolve_layout(state_dir: Path | None = None, config_dir: Path | None = None,
                   environ: Mapping[str, str] = os.environ) -> tuple[Path, Path]:
    """(state directory, config directory). State: --state-dir, $STEALTH_STATE_DIR, systemd's
    $STATE_DIRECTORY, /var/lib/stealth. Config: --config-dir, $STEALTH_CONFIG_DIR, systemd's
    $CONFIGURATION_DIRECTORY; if none is named, the state directory itself when that was named with
    --state-dir or $STEALTH_STATE_DIR (a directory named on purpose is self-contained), else /etc/stealth."""
    named_state = state_dir or first_dir(environ.get(STATE_DIR_ENV))
    state = named_state or first_dir(environ.get(SYSTEMD_STATE_DIR_ENV)) or Path(DEFAULT_STATE_DIR)
    config = (config_dir or first_dir(environ.get(CONFIG_DIR_ENV))
              or first_dir(environ.get(SYSTEMD_CONFIG_DIR_ENV)))
    return state, config or named_state or Path(DEFAULT_CONFIG_DIR)


def find_config(state_dir: Path, config_dir: Path) -> Path:
    """server.toml: the config directory's, unless the state directory holds its own (the layout before
    /etc/stealth keeps working as it was); both at once is refused rather than guessed."""
    central, own = config_dir / "server.toml", state_dir / "server.toml"
    if os.path.abspath(config_dir) == os.path.abspath(state_dir) or not own.exists():
        return central
    if central.exists():
        raise ConfigError(central, f"and {own} both exist; keep one (the config belongs in {config_dir})")
    return own


class DaemonFiles:
    """What the running daemon writes besides its counters: status.json (and one per worker with
    --workers), and the record of each client's last accepted knock (accepts.py)."""

    dir: Path
    status_path: Path

    def _status_file(self, worker: int | None) -> Path:
        """status.json (the server, or the parent of --workers), status.w<i>.json for worker i."""
        return self.status_path if worker is None else self.dir / f"status.w{worker}.json"

    def write_status(self, status: dict[str, Any], worker: int | None = None) -> None:
        """Replace the status file of the server (or of worker `worker`) with `status` and the time now."""
        write_json(self._status_file(worker), {**status, "written_at": time.time()})

    def daemon_state(self) -> tuple[str, dict[str, Any] | None]:
        """("running" | "stopped" | "dead" | "stalled" | "never ran", the status document). Running means
        its pid is alive and it wrote its status within DAEMON_STALE_SECONDS; "dead": it said running,
        but its pid is gone (killed or crashed: its rules are still in place, the ports stay closed)."""
        status = self.read_status()
        if status is None:
            return "never ran", None
        if not status.get("running"):
            return "stopped", status
        try:
            os.kill(int(status["pid"]), 0)
        except (KeyError, TypeError, ValueError, ProcessLookupError):
            return "dead", status
        except PermissionError:
            pass  # alive, another user's
        written = status.get("written_at")
        if not isinstance(written, int | float) or time.time() - written > DAEMON_STALE_SECONDS:
            return "stalled", status
        return "running", status

    def read_status(self, worker: int | None = None) -> dict[str, Any] | None:
        """The status document of the server (or of worker `worker`); None if there is none or it is not an
        object. ConfigError when it cannot be read or parsed."""
        path = self._status_file(worker)
        if not path.exists():
            return None
        doc = read_json(path)
        return doc if isinstance(doc, dict) else None

    def accept_paths(self, worker: int | None = None) -> tuple[Path, Path]:
        """(log, snapshot) of the last-accept record of the server, or of worker `worker`."""
        base = "accepts" if worker is None else f"accepts.w{worker}"
        return self.dir / f"{base}.log", self.dir / f"{base}.snap"

    def accept_files(self) -> list[Path]:
        """Every last-accept file, logs before snapshots: the order a reader must take them in (entries
        only ever move from a log into a snapshot, so reading that way never misses one)."""
        return sorted(self.dir.glob("accepts*.log")) + sorted(self.dir.glob("accepts*.snap"))


class ServerState(Enrollment, DaemonFiles):
    """The server's config and state directories and the admin operations on them; locate() finds them
    from flags, environment and defaults."""

    def __init__(self, state_dir: Path | str, config_dir: Path | str | None = None) -> None:
        """`config_dir` None: server.toml in the state directory (locate() applies the defaults)."""
        self.dir = Path(state_dir)
        self.config_dir = self.dir if config_dir is None else Path(config_dir)
        self.config_path = find_config(self.dir, self.config_dir)
        self.clients_path = self.dir / "clients.jsonl"
        self.counters_path = self.dir / "counters.json"
        self.journal_path = self.dir / "counters.log"
        self.status_path = self.dir / "status.json"
        self.counters_lock = self.dir / "counters.lock"
        self.admin_lock = self.dir / "admin.lock"
        self.run_lock = self.dir / "run.lock"

    @classmethod
    def locate(cls, state_dir: Path | None = None, config_dir: Path | None = None,
               environ: Mapping[str, str] = os.environ) -> "ServerState":
        """The server's files where flags, environment and defaults put them (resolve_layout)."""
        return cls(*resolve_layout(state_dir, config_dir, environ))

    # --- setup -----------------------------------------------------------------------------------
    def init(self, config: ServerConfig) -> None:
        """Create the directories, server.toml from `config` (checked), and empty clients.jsonl and
        counters.json; ConfigError if server.toml exists."""
        ensure_dir(self.dir)
        self.dir.chmod(STATE_DIR_MODE)
        ensure_dir(self.config_dir)
        if self.config_path.exists():
            raise ConfigError(self.config_path, "already exists; this server is initialised")
        check_config(self.config_path, config)
        with locked(self.admin_lock):
            write_toml(self.config_path, config.to_doc())
            if not self.clients_path.exists():
                atomic_write(self.clients_path, CLIENTS_HEADER)
            if not self.counters_path.exists():
                write_json(self.counters_path, {})

    def load_config(self) -> ServerConfig:
        """server.toml, parsed and checked; ConfigError naming the field at fault, or saying to run
        `stealth server init`."""
        if not self.config_path.exists():
            raise ConfigError(self.config_path, "does not exist; run 'stealth server init' first")
        return ServerConfig.from_doc(self.config_path, read_toml(self.config_path))

    # --- counters and status ---------------------------------------------------------------------
    def counter_log(self) -> CounterLog:
        """The counters' snapshot and journal (counterlog.py)."""
        return CounterLog(self.counters_path, self.journal_path)

    def load_counters(self) -> dict[str, int]:
        """enrollment id -> highest accepted counter (snapshot plus journal), without changing them."""
        return self.counter_log().read()
