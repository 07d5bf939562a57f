# Why: the client's per-key counter must be durable *before* the SYN that carries it leaves (a crash,
# power loss or kill -9 at any instant must never make the client reuse a counter or lose the state),
# yet it sits on every connect()'s critical path. A whole-file replace (temp, fsync, rename, directory
# fsync) cost ~0.6 ms; this file costs one small in-place pwrite + fdatasync (~0.1 ms) instead.
#
# Layout: a fixed-size file created once, atomically and durably (stealth.store.atomic_write, 0600),
# then never resized, so fdatasync has no metadata to write. Three 4 KiB blocks, each record at the
# start of its block (a torn write damages only the block being written):
#   block 0, 1: slots A and B = magic | sequence | last_used | last_ok | crc32
#   block 2:    last answered  = magic | last_ok | crc32   (diagnostics only, written without a sync)
# take_counter writes the *other* slot than the current one (the valid slot with the higher sequence),
# then fdatasyncs, so a torn write can only damage the slot being written, whose value nobody used yet.
# The two slots never differ by more than 1 in last_used (each write adds 1; a repair after a bad slot
# rewrites both), so when one slot is unreadable the other holds at most 1 less than the highest counter
# ever saved: the reader then assumes last_used + 1. That makes even a corrupted *current* slot safe
# (one counter skipped, never one reused). Both slots bad is an error naming the file, never a silent
# restart at 0. The flock on <keyid>.lock keeps concurrent stealth-connect processes on distinct
# counters. An old-format <keyid>.json is migrated on first use (the new file starts at its last_used).
import contextlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stealth.constants import COUNTER_MAX
from stealth.errors import ConfigError
from stealth.store import Fields, atomic_write, check_file, ensure_dir, locked, os_error, read_json

SUFFIX = ".ctr"
LEGACY_SUFFIX = ".json"
BLOCK = 4096
FILE_BYTES = 3 * BLOCK
SLOT_OFFSETS = (0, BLOCK)
OK_OFFSET = 2 * BLOCK
SLOT_MAGIC = b"stlctr01"
OK_MAGIC = b"stlok001"
_SLOT = struct.Struct("!8sQQQ")  # magic, sequence, last_used, last_ok; then crc32 of these bytes
_OK = struct.Struct("!8sQ")  # magic, last_ok; then crc32
_CRC = struct.Struct("!I")
CORRUPT_HINT = "the last used counter is unknown; ask the server's admin for a new profile (a new key)"


@dataclass(frozen=True)
class CounterState:
    last_used: int  # highest counter this client may have put in a SYN
    last_ok: int  # counter of the last knock that got an answer (diagnostics)


@dataclass(frozen=True)
class _Slot:
    sequence: int
    last_used: int
    last_ok: int


@dataclass(frozen=True)
class _Current:
    state: CounterState
    sequence: int  # of the slot to supersede
    target: int  # offset of the slot the next write goes to
    torn: bool  # one slot was unreadable


def _pack_slot(sequence: int, last_used: int, last_ok: int) -> bytes:
    body = _SLOT.pack(SLOT_MAGIC, sequence, last_used, last_ok)
    return body + _CRC.pack(zlib.crc32(body))


def _pack_ok(last_ok: int) -> bytes:
    body = _OK.pack(OK_MAGIC, last_ok)
    return body + _CRC.pack(zlib.crc32(body))


def _unpack_slot(raw: bytes) -> _Slot | None:
    body, crc = raw[: _SLOT.size], raw[_SLOT.size : _SLOT.size + _CRC.size]
    if len(crc) != _CRC.size or _CRC.unpack(crc)[0] != zlib.crc32(body):
        return None
    magic, sequence, last_used, last_ok = _SLOT.unpack(body)
    if magic != SLOT_MAGIC or last_ok > last_used:
        return None
    return _Slot(sequence, last_used, last_ok)


def _unpack_ok(raw: bytes) -> int:
    body, crc = raw[: _OK.size], raw[_OK.size : _OK.size + _CRC.size]
    if len(crc) != _CRC.size or _CRC.unpack(crc)[0] != zlib.crc32(body):
        return 0
    magic, last_ok = _OK.unpack(body)
    return int(last_ok) if magic == OK_MAGIC else 0


def initial_image(state: CounterState) -> bytes:
    """The whole file for a fresh (or migrated) counter: both slots valid and equal."""
    blocks = [_pack_slot(1, state.last_used, state.last_ok), _pack_slot(0, state.last_used, state.last_ok),
              _pack_ok(state.last_ok)]
    return b"".join(b.ljust(BLOCK, b"\0") for b in blocks)


def parse(path: Path, image: bytes) -> _Current:
    """The state a whole-file image holds; ConfigError if it is not a counter file or both slots are bad."""
    if len(image) != FILE_BYTES:
        raise ConfigError(path, f"not a stealth counter file (size {len(image)}, expected {FILE_BYTES}); "
                          + CORRUPT_HINT)
    slots = [_unpack_slot(image[off : off + BLOCK]) for off in SLOT_OFFSETS]
    valid = [(s, off) for s, off in zip(slots, SLOT_OFFSETS, strict=True) if s is not None]
    if not valid:
        raise ConfigError(path, "corrupt counter file: both slots fail their checks (magic, checksum); "
                          + CORRUPT_HINT)
    cur, cur_off = max(valid, key=lambda v: (v[0].sequence, v[0].last_used))
    torn = len(valid) == 1
    last_used = max(s.last_used for s, _ in valid)
    if torn:
        # the unreadable slot held at most last_used + 1 (it may have been the newer one): skip it
        last_used = min(last_used + 1, COUNTER_MAX)
    last_ok = max(cur.last_ok, _unpack_ok(image[OK_OFFSET:]))
    if last_ok > last_used:  # a diagnostics block that disagrees with the slots is ignored
        last_ok = cur.last_ok
    target = SLOT_OFFSETS[1] if cur_off == SLOT_OFFSETS[0] else SLOT_OFFSETS[0]
    return _Current(CounterState(last_used, last_ok), cur.sequence, target, torn)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive flock on <keyid>.lock (a fresh open file description each time, so it excludes other
    threads of this process as well as other processes), creating the counters directory if needed."""
    ensure_dir(path.parent)
    with locked(path.with_suffix(".lock")):
        yield


def _open(path: Path) -> int | None:
    """An O_RDWR fd on the counter file after the checks, or None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise os_error(path, e, "open") from None
    try:
        st = os.fstat(fd)
        check_file(path, st)
        if st.st_mode & 0o022:
            raise ConfigError(path, f"is writable by group or others (mode {st.st_mode & 0o777:o}); "
                              "run chmod 600 on it")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(path: Path, fd: int) -> _Current:
    try:
        image = os.pread(fd, FILE_BYTES + 1, 0)
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    return parse(path, image)


def _legacy_state(path: Path) -> CounterState | None:
    legacy = path.with_suffix(LEGACY_SUFFIX)
    if not legacy.exists():
        return None
    f = Fields(legacy, read_json(legacy))
    last_used = f.integer("last_used", 0, COUNTER_MAX)
    return CounterState(last_used, min(last_used, f.integer("last_ok", 0, COUNTER_MAX)))


def _create(path: Path) -> int:
    """Create the counter file (from an old-format .json if there is one). Caller holds the lock."""
    legacy = _legacy_state(path)
    atomic_write(path, initial_image(legacy or CounterState(0, 0)))  # temp, fsync, rename, dir fsync
    if legacy is not None:
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(LEGACY_SUFFIX).unlink()  # the new file, already durable, supersedes it
    fd = _open(path)
    if fd is None:
        raise ConfigError(path, "vanished right after it was created")
    return fd


def _pwrite(path: Path, fd: int, data: bytes, offset: int, sync: bool) -> None:
    try:
        if os.pwrite(fd, data, offset) != len(data):
            raise ConfigError(path, "short write")
        if sync:
            os.fdatasync(fd)
    except OSError as e:
        raise ConfigError(path, f"cannot write: {e.strerror}") from None


def take_counter(path: Path) -> int:
    """Reserve the next counter under the file lock; it is on disk (fdatasync) before this returns."""
    with _locked(path):
        fd = _open(path)
        if fd is None:
            fd = _create(path)
        try:
            cur = _read(path, fd)
            if cur.state.last_used >= COUNTER_MAX:
                raise ConfigError(path, "counter exhausted; ask for a new profile")
            counter = cur.state.last_used + 1
            _pwrite(path, fd, _pack_slot(cur.sequence + 1, counter, cur.state.last_ok), cur.target, sync=True)
            if cur.torn:
                # repair the other slot too (rare), so the slots again differ by at most 1
                other = SLOT_OFFSETS[0] if cur.target == SLOT_OFFSETS[1] else SLOT_OFFSETS[1]
                _pwrite(path, fd, _pack_slot(cur.sequence + 2, counter, cur.state.last_ok), other, sync=True)
            return counter
        finally:
            os.close(fd)


def read_counter(path: Path) -> CounterState:
    """The saved state; an old-format .json is read as is; (0, 0) before the first knock."""
    if not path.exists() and not path.with_suffix(LEGACY_SUFFIX).exists():
        return CounterState(0, 0)  # nothing to lock: a reader creates nothing
    with _locked(path):
        fd = _open(path)
        if fd is None:
            return _legacy_state(path) or CounterState(0, 0)
        try:
            return _read(path, fd).state
        finally:
            os.close(fd)


def record_success(path: Path, counter: int) -> None:
    """Note that `counter` got an answer. Diagnostics only (the out-of-window hint), so no sync: the page
    reaches the disk with the next take_counter's fdatasync or the kernel's writeback, and a torn or lost
    write of its own block only loses this hint, never a slot."""
    with _locked(path):
        fd = _open(path)
        if fd is None:
            return
        try:
            cur = _read(path, fd)
            if cur.state.last_ok < counter <= cur.state.last_used:
                _pwrite(path, fd, _pack_ok(counter), OK_OFFSET, sync=False)
        finally:
            os.close(fd)
