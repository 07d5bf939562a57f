# Why: every whole-file write goes through here. Each is atomic and durable (temp file in the same
# directory, fsync, rename, fsync of the directory), created 0600, so a crash at any instant leaves
# either the old or the new file, never a torn one. (The two hot-path counter files are updated in place
# instead, with checksums and fdatasync: stealth/counterlog.py on the server, stealth_connect/counter.py
# on the client; both are created through here.) Reads of secret files refuse group- or world-readable
# modes. Errors name the file and the fault, never content. stealth-connect reads its profile and counter
# through here on every ssh login, so paths are plain strings (pathlib's import costs ~4.6 ms at start;
# every function takes a str or a Path), json, tomllib and tomli_w are imported where they are used, and
# a profile is read by flat_toml (below), not by tomllib (+8.8 ms), unless it uses more of TOML.
from __future__ import annotations

import contextlib
import fcntl
import os
import stat

from stealth.checks import PORTS_RULE, is_port
from stealth.constants import SECRET_FILE_MODE, STATE_DIR_MODE
from stealth.errors import ConfigError

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, BinaryIO, TypeAlias

    StrPath: TypeAlias = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_writer(path: StrPath, mode: int = SECRET_FILE_MODE, durable: bool = True) -> Iterator[BinaryIO]:
    """Stream a replacement for `path`: a temp file in the same directory, fsync, rename, so a crash
    leaves the old or the new content, never a torn file. `durable` also fsyncs the directory so the new
    content is the one that survives; only pure diagnostics may skip that (after a crash they may read
    the old content). If the block raises, the old file stays and the temp file is removed."""
    path = os.fspath(path)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb", buffering=1 << 20, closefd=False) as f:
                yield f
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ConfigError(path, f"cannot write: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: StrPath, data: bytes, mode: int = SECRET_FILE_MODE, durable: bool = True) -> None:
    """Replace `path` atomically and (unless `durable` is False) durably with `data`."""
    with atomic_writer(path, mode, durable) as f:
        f.write(data)


def check_file(path: StrPath, st: os.stat_result, secret: bool = False) -> None:
    """A regular file; if it holds keys (`secret`), readable by its owner only."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(path, "not a regular file")
    if secret and st.st_mode & 0o077:
        raise ConfigError(
            path, f"holds keys but is readable by group or others (mode {st.st_mode & 0o777:o}); "
            "run chmod 600 on it"
        )


def os_error(path: StrPath, e: OSError, doing: str = "read") -> ConfigError:
    """The one-line error for a failed open or read of `path`."""
    if isinstance(e, FileNotFoundError):
        return ConfigError(path, "does not exist")
    if isinstance(e, IsADirectoryError):
        return ConfigError(path, "is a directory, expected a file")
    if isinstance(e, PermissionError):
        return ConfigError(path, "permission denied")
    return ConfigError(path, f"cannot {doing}: {e.strerror}")


def read_bytes(path: StrPath, secret: bool = False) -> bytes:
    """The whole file. ConfigError (one line naming it) when it is missing, not a regular file or unreadable,
    or, with `secret`, readable by group or others."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            check_file(path, os.fstat(f.fileno()), secret)
            return f.read()
    except OSError as e:
        raise os_error(path, e) from None


def read_toml(path: StrPath, secret: bool = False) -> dict[str, Any]:
    """The table of a TOML file: read_bytes()'s checks, then parse_toml(); ConfigError naming the file."""
    return parse_toml(path, read_bytes(path, secret))


def parse_toml(path: StrPath, raw: bytes) -> dict[str, Any]:
    """The table of a TOML document read from `path` (which errors name: a file, or "standard input")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    doc = flat_toml(text)
    if doc is not None:
        return doc
    import tomllib  # the rest of TOML (and its error messages): not on a knock's path

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"invalid TOML: {e}") from None


# flat_toml: the TOML tomli_w writes for a flat table of strings, integers, booleans and integer arrays
# (every profile and most hand-edited ones), read without tomllib. It accepts a strict subset of TOML and
# returns None for anything else (tables, dotted or quoted keys, escapes, floats, comments after a value,
# control characters, CR, duplicate keys, ...), so tomllib reads those and reports their errors: where it
# returns a table, tomllib returns the same one (tests/adapters/test_profile_reader.py checks that).
_BARE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_MAX_INT_DIGITS = 18  # longer integers go to tomllib, which knows TOML's limits


def flat_toml(text: str) -> dict[str, Any] | None:
    """The table of a flat TOML document of `key = value` lines (values: "strings" without escapes,
    decimal integers, true/false, arrays of integers, which may span lines), comment and blank lines;
    None for any other document, valid TOML or not."""
    if not text.replace("\n", "").replace("\t", "").isprintable():
        return None  # control characters (CR too), and unusual Unicode: tomllib decides
    doc: dict[str, Any] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].strip(" \t")
        i += 1
        if not line or line[0] == "#":
            continue
        key, eq, value = line.partition("=")
        key, value = key.rstrip(" \t"), value.lstrip(" \t")
        if not eq or not key or not _BARE_KEY_CHARS.issuperset(key) or key in doc:
            return None
        if value[:1] == "[" and "]" not in value:  # an array over several lines
            parts = [value]
            while i < len(lines) and "]" not in lines[i]:
                parts.append(lines[i])
                i += 1
            if i == len(lines):
                return None
            parts.append(lines[i].rstrip(" \t"))
            i += 1
            value = " ".join(parts)
        parsed = _flat_value(value)
        if parsed is None:
            return None
        doc[key] = parsed
    return doc


def _flat_value(text: str) -> str | int | bool | list[int] | None:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return None if '"' in inner or "\\" in inner else inner
    if text in ("true", "false"):
        return text == "true"
    if len(text) >= 2 and text[0] == "[" and text[-1] == "]":
        if "#" in text:
            return None
        if not text[1:-1].strip(" \t"):
            return []
        items = [item.strip(" \t") for item in text[1:-1].split(",")]
        if not items[-1]:
            items.pop()  # a trailing comma (an empty item anywhere else is not TOML)
        values = [_flat_int(item) for item in items]
        ints = [v for v in values if v is not None]
        return ints if len(ints) == len(values) else None
    return _flat_int(text)


def _flat_int(text: str) -> int | None:
    digits = text[1:] if text[:1] == "-" else text
    if (not digits.isascii() or not digits.isdigit() or len(digits) > _MAX_INT_DIGITS
            or (digits[0] == "0" and len(digits) > 1)):
        return None
    return int(text)


def write_toml(path: StrPath, doc: dict[str, Any]) -> None:
    """Write `doc` as TOML with atomic_write() (atomic, durable, 0600)."""
    import tomli_w  # only writers need it: a knock reads TOML and never loads the writer

    atomic_write(path, tomli_w.dumps(doc).encode())


def read_json(path: StrPath) -> Any:
    """The JSON document in `path`; ConfigError naming the file when it cannot be read or parsed."""
    import json  # not on a knock's path (only an old-format counter file is JSON)

    raw = read_bytes(path)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(path, f"invalid JSON: {e}") from None


def write_json(path: StrPath, doc: Any, durable: bool = True) -> None:
    """Write `doc` as indented, key-sorted JSON with atomic_write() (0600; `durable` as there)."""
    import json

    atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), durable=durable)


def stamp(path: StrPath) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of a file, or None if it cannot be read: what "has it changed?" compares
    (an atomic replace makes a new inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def ensure_dir(path: StrPath) -> None:
    """Create `path` (mode 0700; missing parents with the default mode) unless it exists; ConfigError when it
    cannot be created or is not a directory."""
    try:
        # only `path` itself gets the mode, as with mkdir -p
        os.makedirs(path, mode=STATE_DIR_MODE, exist_ok=True)
    except OSError as e:
        raise ConfigError(path, f"cannot create directory: {e.strerror}") from None
    if not os.path.isdir(path):
        raise ConfigError(path, "is not a directory")


@contextlib.contextmanager
def locked(path: StrPath, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created 0600) for the duration of the block."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, SECRET_FILE_MODE)
    except OSError as e:
        raise ConfigError(path, f"cannot open lock file: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ConfigError(path, "is locked by another running process") from None
        yield
    finally:
        os.close(fd)


class Fields:
    """Typed access to a parsed TOML/JSON table; a wrong field is a one-line ConfigError naming it."""

    def __init__(self, path: StrPath, table: Any, where: str = "") -> None:
        if not isinstance(table, dict):
            raise ConfigError(path, f"{where or 'document'}: expected a table")
        self.path = path
        self.table = table
        self.where = where

    def fault(self, name: str, msg: str) -> ConfigError:
        """The ConfigError for field `name` of this table: "<path>: [<where>.]<name>: <msg>"."""
        return ConfigError(self.path, f"{self.where}{'.' if self.where else ''}{name}: {msg}")

    def get(self, name: str, kind: type, default: Any = ...) -> Any:
        """Field `name`, checked to be a `kind` (a bool is not an int). When it is missing: `default`, or
        ConfigError if no default is given."""
        if name not in self.table:
            if default is ...:
                raise self.fault(name, "missing")
            return default
        value = self.table[name]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.fault(name, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def integer(self, name: str, lo: int, hi: int, default: Any = ...) -> int:
        """An integer field within lo..hi; ConfigError otherwise."""
        value: int = self.get(name, int, default)
        if not lo <= value <= hi:
            raise self.fault(name, f"must be in {lo}..{hi}")
        return value

    def text(self, name: str, default: Any = ...) -> str:
        value: str = self.get(name, str, default)
        return value

    def flag(self, name: str, default: Any = ...) -> bool:
        value: bool = self.get(name, bool, default)
        return value

    def ports(self, name: str, default: Any = ...) -> tuple[int, ...]:
        """A non-empty list of ports 1..65535, as a sorted tuple without duplicates; ConfigError otherwise."""
        value = self.get(name, list, default)
        valid = all(is_port(p) for p in value)
        if not value or not valid:
            raise self.fault(name, PORTS_RULE)
        return tuple(sorted(set(value)))
