# Why: `stealth server status` shows each client's last accepted knock (time and source address), for a
# million clients, without slowing the packet path or bloating status.json (rewritten every second).
# So the record lives in files of its own, and the daemon's cost is bounded at every step:
# - per accept: one dict assignment (enrollment id -> name, unix second, raw source), next to the accept's
#   log line and fdatasync, which cost far more;
# - about once a second: the entries that changed since the last write, appended to accepts.log as text
#   lines ("<enrollment> <unix time> <address> <name>") in one write(), no fsync (this is a diagnostic:
#   a crash may lose the last second, never a counter);
# - when the log outgrows its snapshot (and ACCEPTS_LOG_MIN_BYTES), it is folded into accepts.snap: the
#   newest line per enrollment, only for clients still enrolled, written atomically, then the log is
#   truncated. The fold runs in steps between queue polls, as reloads do, and appends wait until it is
#   done. So the files hold at most about two lines per enrolled client (~80 bytes each), revoked clients
#   fall out at the next fold, and the daemon never holds more than the changes of one second in memory
#   (the fold's transient map aside).
# With --workers, each worker keeps files of its own (accepts.w<i>.*): one writer per file, no locks.
# Readers take every log before every snapshot (entries only move log -> snapshot) and keep the newest
# line per enrollment; torn or stray lines are skipped.
import logging
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from stealth.constants import ACCEPTS_LOG_MIN_BYTES
from stealth.errors import StealthError
from stealth.steps import run_for
from stealth.store import atomic_writer

log = logging.getLogger("stealth.accepts")
FOLD_CHUNK_LINES = 2000  # lines between two checks of the fold's time budget


@dataclass(frozen=True)
class LastAccept:
    """One client's newest accepted knock, as a record line holds it: unix second, source address (text),
    client name."""

    unix_time: int
    source: str
    name: str


def format_address(raw: bytes) -> str:
    """The text form of a packed IPv4 (4 bytes) or IPv6 (16 bytes) address."""
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def parse_line(line: str) -> tuple[str, LastAccept] | None:
    """(enrollment id, its accept) from one record line, or None for a torn or foreign line."""
    parts = line.split()
    if not line.endswith("\n") or len(parts) != 4 or len(parts[0]) != 16 or not parts[1].isdigit():
        return None
    return parts[0], LastAccept(int(parts[1]), parts[2], parts[3])


def iter_lines(path: Path) -> Iterator[str]:
    """The lines of a record file; none when the file does not exist (other OSErrors propagate)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from f
    except FileNotFoundError:
        return


def read_last_accepts(paths: Iterable[Path]) -> dict[str, LastAccept]:
    """enrollment id -> its newest accepted knock, from record files (logs first, then snapshots)."""
    best: dict[str, LastAccept] = {}
    for path in paths:
        for line in iter_lines(path):
            parsed = parse_line(line)
            if parsed is not None:
                ident, accept = parsed
                old = best.get(ident)
                if old is None or accept.unix_time >= old.unix_time:
                    best[ident] = accept
    return best


class AcceptRecord:
    """The daemon's side: note() on the packet path, flush() about once a second, close() at exit.
    `live(enrollment, name)` says whether a client is still enrolled (folds drop the others)."""

    def __init__(self, log_path: Path, snap_path: Path, live: Callable[[str, str], bool]) -> None:
        self.log_path, self.snap_path, self.live = log_path, snap_path, live
        self.pending: dict[bytes, tuple[str, int, bytes]] = {}
        self._fd: int | None = None  # opened at the first write: forked workers open their own
        self._log_bytes = self._snap_bytes = 0
        self._fold: Iterator[None] | None = None

    @property
    def folding(self) -> bool:
        """True while a fold is in progress: flush() must be called again soon, and appends wait for it."""
        return self._fold is not None

    def note(self, ident: bytes, name: str, unix_time: int, src: bytes) -> None:
        """Remember `name`'s accept at `unix_time` from `src` (packed address), in memory only: the next
        flush() writes it. Cheap enough for the packet path."""
        self.pending[ident] = (name, unix_time, src)

    def flush(self, budget_seconds: float) -> None:
        """Append what changed since the last call, or advance a fold in progress by about
        `budget_seconds` of work (starting one when the log has outgrown its snapshot)."""
        if self._fold is None and self.pending:
            self._append()
            if self._log_bytes > max(self._snap_bytes, ACCEPTS_LOG_MIN_BYTES):
                self._fold = self._fold_steps()
        if self._fold is None:
            return
        try:
            if run_for(self._fold, budget_seconds):
                self._fold = None
        except (OSError, StealthError) as e:
            self._fold = None
            log.warning("cannot fold %s into %s: %s", self.log_path, self.snap_path, e)

    def close(self) -> None:
        """At exit: finish a fold in progress, write what is pending, close the log."""
        while self._fold is not None:
            self.flush(3600.0)
        if self.pending:
            self._append()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._log_bytes = os.fstat(self._fd).st_size
            try:
                self._snap_bytes = os.stat(self.snap_path).st_size
            except FileNotFoundError:
                self._snap_bytes = 0
        return self._fd

    def _append(self) -> None:
        pending, self.pending = self.pending, {}
        data = "".join(f"{ident.hex()} {when} {format_address(src)} {name}\n"
                       for ident, (name, when, src) in pending.items()).encode()
        try:
            fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as e:
            log.warning("cannot write %s: %s", self.log_path, e)
            return
        self._log_bytes += len(data)

    def _fold_steps(self) -> Iterator[None]:
        """Newest line per live enrollment from log and snapshot, into a new snapshot; then an empty
        log. Nothing is appended meanwhile, so no line can be lost between reading and truncating."""
        best: dict[str, tuple[int, str]] = {}
        for path in (self.log_path, self.snap_path):
            for n, line in enumerate(iter_lines(path)):
                parsed = parse_line(line)
                if parsed is not None and parsed[1].unix_time >= best.get(parsed[0], (-1, ""))[0]:
                    best[parsed[0]] = (parsed[1].unix_time, line)
                if n % FOLD_CHUNK_LINES == 0:
                    yield
        size = 0
        with atomic_writer(self.snap_path, durable=False) as out:
            for n, (ident, (_, line)) in enumerate(best.items()):
                if self.live(ident, line.split()[3]):
                    size += out.write(line.encode())
                if n % FOLD_CHUNK_LINES == 0:
                    yield
        os.ftruncate(self._open(), 0)
        self._log_bytes, self._snap_bytes = 0, size
