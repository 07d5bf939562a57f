# Why: the client's per-key counter must be durable *before* the SYN that carries it leaves (a crash,
# power loss or kill -9 at any instant must never make the client reuse a counter or lose the state),
# yet it sits on every connect()'s critical path. A whole-file replace (temp, fsync, rename, directory
# fsync) cost ~0.6 ms; this file costs one small in-place pwrite + fdatasync (~0.1 ms) instead.
#
# Layout: a fixed-size file created once, atomically and durably (stealth.store.atomic_write, 0600),
# then never resized, so fdatasync has no metadata to write. Three 4 KiB blocks, each record at the
# start of its block (a torn write damages only the block being written):
#   block 0, 1: slots A and B = magic | sequence | last_used | last_ok | crc32
#   block 2:    answers        = magic | last_ok | pending | pending_since_ms | crc32 (written without a
#               sync: losing it costs at most a fresh counter; version 1 held only last_ok)
# `pending` is the counter of a knock that got no answer yet: later runs send that same knock again, for
# PENDING_KNOCK_SECONDS after it was first sent (connect.py), instead of spending a new counter.
# take_counter and claim write the *other* slot than the current one (the valid slot with the higher
# sequence), then fdatasync, so a torn write can only damage the slot being written, whose value nobody
# used yet. The two slots never differ by more than 1 in last_used (a write that adds 1 writes one slot;
# a write that jumps further, or a repair after a bad slot, rewrites both), so when one slot is
# unreadable the other holds at most 1 less than the highest counter ever saved: the reader then assumes
# last_used + 1. That makes even a corrupted *current* slot safe (one counter skipped, never one
# reused). Both slots bad is an error naming the file, never a silent restart at 0. The flock on
# <keyid>.lock keeps concurrent stealth-connect processes on distinct counters.
# Paths are strings and the state types Records (stealth/core/record.py): this runs on every ssh login,
# where pathlib's and dataclasses' imports alone would cost ~15 ms.
from __future__ import annotations

import contextlib
import os
import struct
import zlib

from stealth.constants import COUNTER_MAX, RECOVERY_COUNTER_FLAG
from stealth.core.record import Record, set_field
from stealth.errors import ConfigError
from stealth.store import atomic_write, check_file, ensure_dir, locked, os_error

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    from collections.abc import Iterator

    from stealth.store import StrPath

SUFFIX = ".ctr"
BLOCK = 4096
FILE_BYTES = 3 * BLOCK
SLOT_OFFSETS = (0, BLOCK)
OK_OFFSET = 2 * BLOCK
SLOT_MAGIC = b"stlctr01"
OK_MAGIC_V1 = b"stlok001"
OK_MAGIC = b"stlok002"
_SLOT = struct.Struct("!8sQQQ")  # magic, sequence, last_used, last_ok; then crc32 of these bytes
_OK_V1 = struct.Struct("!8sQ")  # magic, last_ok; then crc32
_OK = struct.Struct("!8sQQQ")  # magic, last_ok, pending, pending_since_ms; then crc32
_CRC = struct.Struct("!I")
CORRUPT_HINT = "the last used counter is unknown; ask the server's admin for a new profile (a new key)"


class CounterState(Record):
    """One key's counter file as read: the highest counter this client may have used, the last one answered,
    and the knock still pending (its counter, and when it was first sent)."""

    __slots__ = ("last_ok", "last_used", "pending", "pending_since")
    last_used: int  # highest counter this client may have put in a SYN
    last_ok: int  # counter of the last knock that got an answer
    pending: int  # counter of a knock that got no answer yet (0: none)
    pending_since: float  # unix time it was first sent

    def __init__(self, last_used: int, last_ok: int, pending: int = 0, pending_since: float = 0.0) -> None:
        set_field(self, "last_used", last_used)
        set_field(self, "last_ok", last_ok)
        set_field(self, "pending", pending)
        set_field(self, "pending_since", pending_since)


class _Slot(Record):
    __slots__ = ("last_ok", "last_used", "sequence")
    sequence: int
    last_used: int
    last_ok: int

    def __init__(self, sequence: int, last_used: int, last_ok: int) -> None:
        set_field(self, "sequence", sequence)
        set_field(self, "last_used", last_used)
        set_field(self, "last_ok", last_ok)


class _Current(Record):
    __slots__ = ("sequence", "state", "target", "torn")
    state: CounterState
    sequence: int  # of the slot to supersede
    target: int  # offset of the slot the next write goes to
    torn: bool  # one slot was unreadable

    def __init__(self, state: CounterState, sequence: int, target: int, torn: bool) -> None:
        set_field(self, "state", state)
        set_field(self, "sequence", sequence)
        set_field(self, "target", target)
        set_field(self, "torn", torn)


def _sibling(path: StrPath, suffix: str) -> str:
    """`path` with its suffix replaced (Path.with_suffix): <keyid>.lock beside <keyid>.ctr."""
    return os.path.splitext(os.fspath(path))[0] + suffix


def _pack_slot(sequence: int, last_used: int, last_ok: int) -> bytes:
    body = _SLOT.pack(SLOT_MAGIC, sequence, last_used, last_ok)
    return body + _CRC.pack(zlib.crc32(body))


def _pack_ok(last_ok: int, pending: int = 0, pending_since: float = 0.0) -> bytes:
    body = _OK.pack(OK_MAGIC, last_ok, pending, int(pending_since * 1000))
    return body + _CRC.pack(zlib.crc32(body))


def _unpack_slot(raw: bytes) -> _Slot | None:
    body, crc = raw[: _SLOT.size], raw[_SLOT.size : _SLOT.size + _CRC.size]
    if len(crc) != _CRC.size or _CRC.unpack(crc)[0] != zlib.crc32(body):
        return None
    magic, sequence, last_used, last_ok = _SLOT.unpack(body)
    if magic != SLOT_MAGIC or last_ok > last_used:
        return None
    return _Slot(sequence, last_used, last_ok)


def _unpack_ok(raw: bytes) -> tuple[int, int, float]:
    """(last_ok, pending, pending_since) from block 2, either version; zeros when unreadable."""
    for fmt, magic in ((_OK, OK_MAGIC), (_OK_V1, OK_MAGIC_V1)):
        body, crc = raw[: fmt.size], raw[fmt.size : fmt.size + _CRC.size]
        if len(crc) == _CRC.size and _CRC.unpack(crc)[0] == zlib.crc32(body) and body[:8] == magic:
            fields = fmt.unpack(body)[1:]
            return (fields[0], fields[1], fields[2] / 1000) if magic == OK_MAGIC else (fields[0], 0, 0.0)
    return 0, 0, 0.0


def initial_image(state: CounterState) -> bytes:
    """The whole file for a fresh counter: both slots valid and equal."""
    blocks = [_pack_slot(1, state.last_used, state.last_ok), _pack_slot(0, state.last_used, state.last_ok),
              _pack_ok(state.last_ok)]
    return b"".join(b.ljust(BLOCK, b"\0") for b in blocks)


def parse(path: StrPath, image: bytes) -> _Current:
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
    answered, pending, since = _unpack_ok(image[OK_OFFSET:])
    last_ok = max(cur.last_ok, answered)
    if last_ok > last_used:  # an answers block that disagrees with the slots is ignored
        last_ok, pending = cur.last_ok, 0
    if not (last_ok < pending <= last_used or pending & RECOVERY_COUNTER_FLAG):
        pending, since = 0, 0.0
    target = SLOT_OFFSETS[1] if cur_off == SLOT_OFFSETS[0] else SLOT_OFFSETS[0]
    return _Current(CounterState(last_used, last_ok, pending, since), cur.sequence, target, torn)


@contextlib.contextmanager
def _locked(path: StrPath) -> Iterator[None]:
    """Exclusive flock on <keyid>.lock (a fresh open file description each time, so it excludes other
    threads of this process as well as other processes), creating the counters directory if needed."""
    ensure_dir(os.path.dirname(os.fspath(path)) or ".")
    with locked(_sibling(path, ".lock")):
        yield


def _open(path: StrPath) -> int | None:
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


def _read(path: StrPath, fd: int) -> _Current:
    try:
        image = os.pread(fd, FILE_BYTES + 1, 0)
    except OSError as e:
        raise ConfigError(path, f"cannot read: {e.strerror}") from None
    return parse(path, image)


def _create(path: StrPath) -> int:
    """Create the counter file at 0. Caller holds the lock."""
    atomic_write(path, initial_image(CounterState(0, 0)))  # temp, fsync, rename, dir fsync
    fd = _open(path)
    if fd is None:
        raise ConfigError(path, "vanished right after it was created")
    return fd


def _pwrite(path: StrPath, fd: int, data: bytes, offset: int, sync: bool) -> None:
    try:
        if os.pwrite(fd, data, offset) != len(data):
            raise ConfigError(path, "short write")
        if sync:
            os.fdatasync(fd)
    except OSError as e:
        raise ConfigError(path, f"cannot write: {e.strerror}") from None


def _update(path: StrPath) -> contextlib.AbstractContextManager[tuple[int, _Current]]:
    """Under the file lock: the open fd (the file created if missing) and its current state."""

    @contextlib.contextmanager
    def cm() -> Iterator[tuple[int, _Current]]:
        with _locked(path):
            fd = _open(path)
            if fd is None:
                fd = _create(path)
            try:
                yield fd, _read(path, fd)
            finally:
                os.close(fd)

    return cm()


def _save_used(path: StrPath, fd: int, cur: _Current, last_used: int, last_ok: int) -> None:
    """Make last_used durable: one slot when it grows by 1, both slots (in turn) when it jumps further
    or a slot was torn, so the slots never differ by more than 1."""
    _pwrite(path, fd, _pack_slot(cur.sequence + 1, last_used, last_ok), cur.target, sync=True)
    if cur.torn or last_used > cur.state.last_used + 1:
        other = SLOT_OFFSETS[0] if cur.target == SLOT_OFFSETS[1] else SLOT_OFFSETS[1]
        _pwrite(path, fd, _pack_slot(cur.sequence + 2, last_used, last_ok), other, sync=True)


def take_counter(path: StrPath) -> int:
    """Reserve the next counter under the file lock; it is on disk (fdatasync) before this returns."""
    with _update(path) as (fd, cur):
        if cur.state.last_used >= COUNTER_MAX:
            raise ConfigError(path, "counter exhausted; ask for a new profile")
        counter = cur.state.last_used + 1
        _save_used(path, fd, cur, counter, cur.state.last_ok)
        return counter


def claim(path: StrPath, counter: int, now: float, max_age: float) -> bool:
    """Take `counter` for a knock about to be sent, under the file lock. The pending counter is taken
    again while younger than `max_age` seconds (nothing to write: the same knock is sent again). A new
    counter must be above every counter used so far: it is made durable (fdatasync) and becomes the
    pending one. False when another run took it first: the caller moves on."""
    with _update(path) as (fd, cur):
        st = cur.state
        if counter <= st.last_used:
            return counter == st.pending and 0 <= now - st.pending_since < max_age
        if counter > COUNTER_MAX:
            raise ConfigError(path, "counter exhausted; ask for a new profile")
        _save_used(path, fd, cur, counter, st.last_ok)
        _pwrite(path, fd, _pack_ok(st.last_ok, counter, now), OK_OFFSET, sync=False)
        return True


def mark_pending(path: StrPath, counter: int, now: float) -> None:
    """Note a knock that spends no counter of ours (a recovery token) as sent and not yet answered."""
    with _update(path) as (fd, cur):
        _pwrite(path, fd, _pack_ok(cur.state.last_ok, counter, now), OK_OFFSET, sync=False)


def record_refused(path: StrPath, counter: int) -> None:
    """The knock with `counter` got an RST: sending it again is pointless, so it is pending no more."""
    with _update(path) as (fd, cur):
        if cur.state.pending == counter:
            _pwrite(path, fd, _pack_ok(cur.state.last_ok), OK_OFFSET, sync=False)


def record_recovery(path: StrPath, base: int) -> None:
    """A recovery knock got in: the server's counter for this key is now `base`; so is ours, durably."""
    with _update(path) as (fd, cur):
        if base > cur.state.last_used:
            _save_used(path, fd, cur, base, base)
        _pwrite(path, fd, _pack_ok(max(base, cur.state.last_ok)), OK_OFFSET, sync=False)


def read_counter(path: StrPath) -> CounterState:
    """The saved state; (0, 0) before the first knock."""
    if not os.path.exists(path):
        return CounterState(0, 0)  # nothing to lock: a reader creates nothing
    with _locked(path):
        fd = _open(path)
        if fd is None:
            return CounterState(0, 0)
        try:
            return _read(path, fd).state
        finally:
            os.close(fd)


def record_success(path: StrPath, counter: int) -> None:
    """Note that `counter` got an answer (and is pending no more). No sync: the page reaches the disk with
    the next fdatasync or the kernel's writeback, and a torn or lost write of its own block costs at most
    a fresh counter or a needless recovery knock later, never a slot."""
    with _locked(path):
        fd = _open(path)
        if fd is None:
            return
        try:
            cur = _read(path, fd)
            if cur.state.last_ok < counter <= cur.state.last_used:
                pending = cur.state.pending if cur.state.pending > counter else 0
                _pwrite(path, fd, _pack_ok(counter, pending, cur.state.pending_since), OK_OFFSET, sync=False)
        finally:
            os.close(fd)
