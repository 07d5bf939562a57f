# Why: the client's state directory: one profile (key, 0600) per host name, and one counter file per
# key (counters/<keyid>.ctr, so every host alias of one profile shares one counter sequence), with the
# lock that makes concurrent stealth-connect runs take distinct counters. The counter is saved durably
# *before* the SYN that uses it leaves, so a crash can skip counters but never reuse one (counter.py).
# A process that connects repeatedly (the library API) keeps each parsed profile and its key id while
# the file's inode, size, mode, owner and timestamps stay the same (files changed in the last 2 s are
# re-read every time, since a change within one timestamp tick would not show).
# A knock goes through here on every ssh login, so its paths are strings (pathlib's import costs ~4.6 ms
# at start), no re, threading or dataclasses; the methods that name a file for people (find,
# counter_path, ...) still return a Path, built on demand.
from __future__ import annotations

import _thread
import functools
import os
import stat
import time

from stealth.core.record import Record, set_field
from stealth.core.secret import Secret
from stealth.core.token import key_id
from stealth.errors import ClientError
from stealth.profile import Profile
from stealth.store import ensure_dir, read_toml, write_toml
from stealth_connect.counter import SUFFIX, CounterState, read_counter, record_success, take_counter

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    from pathlib import Path

    from stealth.store import StrPath

__all__ = [
    "ClientStore", "CounterState", "default_dir", "host_filename", "load_profile", "read_counter",
    "record_success", "take_counter",
]

_SAFE_HOST_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-")


def _as_path(path: str) -> Path:
    from pathlib import Path  # only for callers that want one: a knock never does

    return Path(path)


def clean_path(path: StrPath) -> str:
    """The string pathlib would make of `path` (no empty or "." parts, no trailing slash), so messages
    name files as they did when these were Paths."""
    text = os.fspath(path)
    root = "//" if text[:2] == "//" and text[:3] != "///" else "/" if text[:1] == "/" else ""
    return root + "/".join(part for part in text.split("/") if part not in ("", ".")) or "."


def _join(base: str, *names: str) -> str:
    """Path(base).joinpath(*names), as a string (names are single, non-empty file names)."""
    base = clean_path(base)
    if base == ".":
        return "/".join(names)
    return base + ("" if base.endswith("/") else "/") + "/".join(names)


def default_dir_name() -> str:
    """default_dir() as a string."""
    env = os.environ.get("STEALTH_CLIENT_DIR")
    if env:
        return clean_path(os.path.expanduser(env))
    base = os.environ.get("XDG_CONFIG_HOME") or _join(os.path.expanduser("~"), ".config")
    return _join(base, "stealth")


def default_dir() -> Path:
    """The client state directory: $STEALTH_CLIENT_DIR, else $XDG_CONFIG_HOME/stealth, else
    ~/.config/stealth."""
    return _as_path(default_dir_name())


def host_filename(host: str) -> str:
    """The file name (without .toml) a host's profile is stored under: lowercase, characters outside
    [A-Za-z0-9._:-] as "_". ClientError for an empty name or one that starts with "."."""
    host = host.strip().lower()
    if not host or host.startswith("."):
        raise ClientError(f"invalid host name {host!r}")
    return "".join(c if c in _SAFE_HOST_CHARS else "_" for c in host)


_StatKey = tuple[int, int, int, int, int, int, int]
_profiles: dict[str, tuple[_StatKey, Profile]] = {}
_profiles_lock = _thread.allocate_lock()  # threading.Lock, without threading's import


RACY_SECONDS = 2  # a file changed this recently may change again within one timestamp tick: not cached


def _stat_key(path: str) -> _StatKey | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077:
        return None  # never served from the cache: read_toml gives the one-line error
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_SECONDS * 1_000_000_000:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode, st.st_uid)


def load_profile(path: StrPath) -> Profile:
    """Parse a profile (0600 enforced); repeated loads of an unchanged file reuse the parsed one."""
    cache_key = os.path.join(os.getcwd(), path)  # Path.absolute(): an absolute path stays as it is
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


class Entry(Record):
    """One imported profile, as `stealth client list` shows it."""

    __slots__ = ("host", "last_used", "name", "ports", "sealed")
    host: str
    name: str
    ports: tuple[int, ...]
    sealed: tuple[int, ...]
    last_used: int

    def __init__(self, host: str, name: str, ports: tuple[int, ...], sealed: tuple[int, ...],
                 last_used: int) -> None:
        set_field(self, "host", host)
        set_field(self, "name", name)
        set_field(self, "ports", ports)
        set_field(self, "sealed", sealed)
        set_field(self, "last_used", last_used)


class ClientStore:
    """The client state directory. The *_file and locate methods give plain strings (what a knock uses);
    the *_path, find, import_profile and remove ones give Paths."""

    def __init__(self, state_dir: StrPath | None = None) -> None:
        self.dir_name = clean_path(state_dir) if state_dir is not None else default_dir_name()

    @property
    def dir(self) -> Path:
        return _as_path(self.dir_name)

    def profile_file(self, host: str) -> str:
        """Where the profile for `host` is, or would be, stored: <dir>/hosts/<host_filename>.toml."""
        return _join(self.dir_name, "hosts", f"{host_filename(host)}.toml")

    def profile_path(self, host: str) -> Path:
        """profile_file() as a Path."""
        return _as_path(self.profile_file(host))

    def counter_file(self, profile: Profile) -> str:
        """One counter per key: a re-issued profile (new key) starts a new sequence by itself. The
        directory is created with the counter file, at the first take_counter."""
        return _join(self.dir_name, "counters", f"{_key_id(profile.key)}{SUFFIX}")

    def counter_path(self, profile: Profile) -> Path:
        """counter_file() as a Path."""
        return _as_path(self.counter_file(profile))

    def import_profile(self, source: StrPath, host: str) -> Path:
        """Read the profile file `source` (0600 enforced, validated) and store it for `host` with
        save_profile(); ConfigError naming the file when it is unsafe, unreadable or invalid."""
        return self.save_profile(load_profile(source), host)

    def save_profile(self, profile: Profile, host: str) -> Path:
        """Store `profile` for `host` (0600, atomically), replacing what was stored for it."""
        ensure_dir(_join(self.dir_name, "hosts"))
        dest = self.profile_file(host)
        write_toml(dest, profile.to_doc())
        return _as_path(dest)

    def locate(self, host: str, name: str | None = None) -> str:
        """find(), as a string."""
        names = [n for n in (name, host) if n]
        for n in dict.fromkeys(names):
            path = self.profile_file(n)
            if os.path.exists(path):
                return path
        raise ClientError(
            f"no stealth profile for {' or '.join(map(repr, dict.fromkeys(names)))} (looked in "
            f"{_join(self.dir_name, 'hosts')}); import one with: stealth client import PROFILE --host "
            f"{names[0]}"
        )

    def find(self, host: str, name: str | None = None) -> Path:
        """The profile imported under `name` (the name typed: ssh's %n, often a Host alias), else under
        `host` (the address or HostName that is dialled: %h)."""
        return _as_path(self.locate(host, name))

    def entries(self) -> list[Entry]:
        """Every imported profile, by host name."""
        out = []
        for path in sorted(self.dir.joinpath("hosts").glob("*.toml")):
            profile = load_profile(path)
            state = read_counter(self.counter_file(profile))
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
