# Why: every whole-file write goes through here. Each is atomic and durable (temp file in the same
# directory, fsync, rename, fsync of the directory), created 0600, so a crash at any instant leaves
# either the old or the new file, never a torn one. (The two hot-path counter files are updated in place
# instead, with checksums and fdatasync: stealth/counterlog.py on the server, stealth_connect/counter.py
# on the client; both are created through here.) Reads of secret files refuse group- or world-readable
# modes. Errors name the file and the fault, never content.
import contextlib
import fcntl
import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from stealth.constants import SECRET_FILE_MODE
from stealth.errors import ConfigError


@contextlib.contextmanager
def atomic_writer(path: Path, mode: int = SECRET_FILE_MODE, durable: bool = True) -> Iterator[BinaryIO]:
    """Stream a replacement for `path`: a temp file in the same directory, fsync, rename, so a crash
    leaves the old or the new content, never a torn file. `durable` also fsyncs the directory so the new
    content is the one that survives; only pure diagnostics may skip that (after a crash they may read
    the old content). If the block raises, the old file stays and the temp file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
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
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ConfigError(path, f"cannot write: {e.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: Path, data: bytes, mode: int = SECRET_FILE_MODE, durable: bool = True) -> None:
    """Replace `path` atomically and (unless `durable` is False) durably with `data`."""
    with atomic_writer(path, mode, durable) as f:
        f.write(data)


def check_file(path: Path, st: os.stat_result, secret: bool = False) -> None:
    """A regular file; if it holds keys (`secret`), readable by its owner only."""
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(path, "not a regular file")
    if secret and st.st_mode & 0o077:
        raise ConfigError(
            path, f"holds keys but is readable by group or others (mode {st.st_mode & 0o777:o}); "
            "run chmod 600 on it"
        )


def os_error(path: Path, e: OSError, doing: str = "read") -> ConfigError:
    """The one-line error for a failed open or read of `path`."""
    if isinstance(e, FileNotFoundError):
        return ConfigError(path, "does not exist")
    if isinstance(e, IsADirectoryError):
        return ConfigError(path, "is a directory, expected a file")
    if isinstance(e, PermissionError):
        return ConfigError(path, "permission denied")
    return ConfigError(path, f"cannot {doing}: {e.strerror}")


def read_bytes(path: Path, secret: bool = False) -> bytes:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            check_file(path, os.fstat(f.fileno()), secret)
            return f.read()
    except OSError as e:
        raise os_error(path, e) from None


def read_toml(path: Path, secret: bool = False) -> dict[str, Any]:
    raw = read_bytes(path, secret)
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, f"invalid TOML: {e}") from None


def write_toml(path: Path, doc: dict[str, Any]) -> None:
    import tomli_w  # only writers need it: a knock reads TOML and never loads the writer

    atomic_write(path, tomli_w.dumps(doc).encode())


def read_json(path: Path) -> Any:
    raw = read_bytes(path)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(path, f"invalid JSON: {e}") from None


def write_json(path: Path, doc: Any, durable: bool = True) -> None:
    atomic_write(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), durable=durable)


def stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime ns, size) of a file, or None if it cannot be read: what "has it changed?" compares
    (an atomic replace makes a new inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def ensure_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(path, f"cannot create directory: {e.strerror}") from None
    if not path.is_dir():
        raise ConfigError(path, "is not a directory")


@contextlib.contextmanager
def locked(path: Path, blocking: bool = True) -> Iterator[None]:
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

    def __init__(self, path: Path | str, table: Any, where: str = "") -> None:
        if not isinstance(table, dict):
            raise ConfigError(path, f"{where or 'document'}: expected a table")
        self.path = path
        self.table = table
        self.where = where

    def fault(self, name: str, msg: str) -> ConfigError:
        return ConfigError(self.path, f"{self.where}{'.' if self.where else ''}{name}: {msg}")

    def get(self, name: str, kind: type, default: Any = ...) -> Any:
        if name not in self.table:
            if default is ...:
                raise self.fault(name, "missing")
            return default
        value = self.table[name]
        if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
            raise self.fault(name, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def integer(self, name: str, lo: int, hi: int, default: Any = ...) -> int:
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
        value = self.get(name, list, default)
        valid = all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value)
        if not value or not valid:
            raise self.fault(name, "expected a non-empty list of ports 1..65535")
        return tuple(sorted(set(value)))
