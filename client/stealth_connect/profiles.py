# Why: the client's state directory: one profile (key, 0600) per host name, and one counter file per
# key (so every host alias of one profile shares one counter sequence), with the lock that makes
# concurrent stealth-connect runs take distinct counters. The counter is saved durably *before* the SYN
# that uses it leaves, so a crash can skip counters but never reuse one.
import os
import re
from dataclasses import dataclass
from pathlib import Path

from stealth.constants import COUNTER_MAX
from stealth.core.token import key_id
from stealth.errors import ClientError, ConfigError
from stealth.profile import Profile
from stealth.store import (
    Fields,
    ensure_dir,
    locked,
    read_json,
    read_toml,
    write_json,
    write_toml,
)

_SAFE_HOST = re.compile(r"[^A-Za-z0-9._:-]")


def default_dir() -> Path:
    env = os.environ.get("STEALTH_CLIENT_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stealth"


def host_filename(host: str) -> str:
    host = host.strip().lower()
    if not host or host.startswith("."):
        raise ClientError(f"invalid host name {host!r}")
    return _SAFE_HOST.sub("_", host)


def load_profile(path: Path) -> Profile:
    return Profile.from_doc(path, read_toml(path, secret=True))


@dataclass(frozen=True)
class CounterState:
    last_used: int  # highest counter this client ever put in a SYN
    last_ok: int  # counter of the last knock that got an answer


class ClientStore:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.dir = Path(state_dir) if state_dir is not None else default_dir()

    def profile_path(self, host: str) -> Path:
        return self.dir / "hosts" / f"{host_filename(host)}.toml"

    def counter_path(self, profile: Profile) -> Path:
        """One counter per key: a re-issued profile (new key) starts a new sequence by itself."""
        ensure_dir(self.dir / "counters")
        return self.dir / "counters" / f"{key_id(profile.key)}.json"

    def import_profile(self, source: Path, host: str) -> Path:
        profile = load_profile(source)
        ensure_dir(self.dir / "hosts")
        dest = self.profile_path(host)
        write_toml(dest, profile.to_doc())
        return dest

    def find(self, host: str) -> Path:
        path = self.profile_path(host)
        if not path.exists():
            raise ClientError(
                f"no stealth profile for host {host!r} (looked for {path}); "
                f"import one with: stealth client import PROFILE --host {host}"
            )
        return path


def read_counter(path: Path) -> CounterState:
    if not path.exists():
        return CounterState(0, 0)
    f = Fields(path, read_json(path))
    return CounterState(f.integer("last_used", 0, COUNTER_MAX), f.integer("last_ok", 0, COUNTER_MAX))


def take_counter(path: Path) -> int:
    """Reserve the next counter under a file lock and save it durably before returning it."""
    with locked(path.with_suffix(".lock")):
        state = read_counter(path)
        if state.last_used >= COUNTER_MAX:
            raise ConfigError(path, "counter exhausted; ask for a new profile")
        counter = state.last_used + 1
        write_json(path, {"last_used": counter, "last_ok": state.last_ok})
        return counter


def record_success(path: Path, counter: int) -> None:
    with locked(path.with_suffix(".lock")):
        state = read_counter(path)
        if counter > state.last_ok:
            # last_ok only feeds the out-of-window diagnosis; last_used was made durable before the SYN
            write_json(path, {"last_used": max(state.last_used, counter), "last_ok": counter}, durable=False)
