# Why: the client's state directory: one profile (key, 0600) per host name, and one counter file per
# key (counters/<keyid>.ctr, so every host alias of one profile shares one counter sequence), with the
# lock that makes concurrent stealth-connect runs take distinct counters. The counter is saved durably
# *before* the SYN that uses it leaves, so a crash can skip counters but never reuse one (counter.py).
# A process that connects repeatedly (the library API) keeps each parsed profile and its key id while
# the file's inode, size, mode, owner and timestamps stay the same (files changed in the last 2 s are
# re-read every time, since a change within one timestamp tick would not show).
import functools
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stealth.core.secret import Secret
from stealth.core.token import key_id
from stealth.errors import ClientError
from stealth.profile import Profile
from stealth.store import ensure_dir, read_toml, write_toml
from stealth_connect.counter import SUFFIX, CounterState, read_counter, record_success, take_counter

__all__ = [
    "ClientStore", "CounterState", "default_dir", "host_filename", "load_profile", "read_counter",
    "record_success", "take_counter",
]

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


_StatKey = tuple[int, int, int, int, int, int, int]
_profiles: dict[Path, tuple[_StatKey, Profile]] = {}
_profiles_lock = threading.Lock()


RACY_SECONDS = 2  # a file changed this recently may change again within one timestamp tick: not cached


def _stat_key(path: Path) -> _StatKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        return None  # never served from the cache: read_toml gives the one-line error
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1_000_000_000:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def load_profile(path: Path) -> Profile:
    """Parse a profile (0600 enforced); repeated loads of an unchanged file reuse the parsed one."""
    cache_key = Path(path).absolute()
    before = _stat_key(cache_key)
    with _profiles_lock:
        hit = _profiles.get(cache_key)
    if before is not None and hit is not None and hit[0] == before:
        return hit[1]
    profile = Profile.from_doc(path, read_toml(path, secret=True))
    if before is not None and _stat_key(cache_key) == before:  # unchanged while we read it
        with _profiles_lock:
            _profiles[cache_key] = (before, profile)
    return profile


@functools.lru_cache(maxsize=64)
def _key_id(key: Secret) -> str:
    return key_id(key)


@dataclass(frozen=True)
class Entry:
    """One imported profile, as `stealth client list` shows it."""

    host: str
    name: str
    ports: tuple[int, ...]
    sealed: tuple[int, ...]
    last_used: int


class ClientStore:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.dir = Path(state_dir) if state_dir is not None else default_dir()

    def profile_path(self, host: str) -> Path:
        return self.dir / "hosts" / f"{host_filename(host)}.toml"

    def counter_path(self, profile: Profile) -> Path:
        """One counter per key: a re-issued profile (new key) starts a new sequence by itself. The
        directory is created with the counter file, at the first take_counter."""
        return self.dir / "counters" / f"{_key_id(profile.key)}{SUFFIX}"

    def import_profile(self, source: Path, host: str) -> Path:
        profile = load_profile(source)
        ensure_dir(self.dir / "hosts")
        dest = self.profile_path(host)
        write_toml(dest, profile.to_doc())
        return dest

    def find(self, host: str, name: str | None = None) -> Path:
        """The profile imported under `name` (the name typed: ssh's %n, often a Host alias), else under
        `host` (the address or HostName that is dialled: %h)."""
        names = [n for n in (name, host) if n]
        for n in dict.fromkeys(names):
            path = self.profile_path(n)
            if path.exists():
                return path
        raise ClientError(
            f"no stealth profile for {' or '.join(map(repr, dict.fromkeys(names)))} (looked in "
            f"{self.dir / 'hosts'}); import one with: stealth client import PROFILE --host {names[0]}"
        )

    def entries(self) -> list[Entry]:
        """Every imported profile, by host name."""
        out = []
        for path in sorted((self.dir / "hosts").glob("*.toml")):
            profile = load_profile(path)
            state = read_counter(self.counter_path(profile))
            out.append(Entry(path.stem, profile.name, profile.ports, profile.sealed, state.last_used))
        return out

    def remove(self, host: str) -> Path:
        """Delete the profile stored for `host`. The counter file stays: were the same key imported
        again, it must go on from where it was, never reuse a counter."""
        path = self.profile_path(host)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ClientError(f"no stealth profile for {host!r} (looked for {path})") from None
        except OSError as e:
            raise ClientError(f"cannot remove {path}: {e.strerror}") from None
        return path
