# Why: every accepted knock must make its counter durable before its verdict, and rewriting a snapshot
# of every client's counter per commit costs O(clients) bytes and two fsyncs (1.4 ms at 1,000 clients,
# tens of MB at a million). So counters live in a snapshot (counters.json, replaced atomically: temp file,
# fsync, rename, directory fsync) plus an append-only journal (counters.log) of fixed 24-byte records,
# each with a magic and a CRC32. A commit appends its records in one write and one fdatasync (~0.1 ms
# here). A crash can tear only the records of a commit whose fdatasync had not returned, i.e. whose knocks
# got no verdict yet; on open the valid prefix is kept and the torn tail cut off, so no accepted counter is
# ever lost and none is ever read back lower. When the journal outgrows the snapshot it is folded into a
# new snapshot and replaced by an empty one (snapshot first, so a crash in between only replays records
# the snapshot already holds: merging takes the maximum).
import os
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from stealth.constants import COUNTER_MAX, GROUP_COMMIT_MAX
from stealth.errors import ConfigError
from stealth.store import atomic_write, atomic_writer, read_bytes, read_json

RECORD = struct.Struct("<4s8sQI")  # magic, enrollment id (8 bytes), counter, CRC32 of the first 20 bytes
MAGIC = b"SCL1"
IDENT_HEX = 16
COMPACT_MIN_RECORDS = 65536


def is_ident(text: str) -> bool:
    """Enrollment ids are 8 random bytes in lowercase hex."""
    return len(text) == IDENT_HEX and all(c in "0123456789abcdef" for c in text)


def record(ident: bytes, counter: int) -> bytes:
    """One 24-byte journal record for (8-byte enrollment id, counter), its CRC32 included."""
    head = MAGIC + ident + counter.to_bytes(8, "little")
    return head + zlib.crc32(head).to_bytes(4, "little")


def parse_records(data: bytes) -> tuple[list[tuple[str, int]], int]:
    """The valid records at the start of `data` as (enrollment hex, counter), and the byte length of that
    valid prefix. Parsing stops at the first short, foreign or corrupt record."""
    out = []
    size = RECORD.size
    end = len(data) - len(data) % size
    pos = 0
    while pos < end:
        magic, ident, counter, crc = RECORD.unpack_from(data, pos)
        if magic != MAGIC or zlib.crc32(data[pos : pos + 20]) != crc:
            break
        out.append((ident.hex(), counter))
        pos += size
    return out, pos


class CounterLog:
    """Each client's highest accepted counter: a snapshot (counters.json) plus an append-only journal
    (counters.log). read() is for any reader; open(), append(), catch_up(), compact() and close() only for the
    one process that writes (or a worker under the counters lock)."""

    def __init__(self, snapshot: Path, journal: Path) -> None:
        self.snapshot = snapshot
        self.journal = journal
        self.fd: int | None = None
        self.offset = 0  # end of the valid journal, where the next commit writes
        self.inode = 0

    # --- reading ---------------------------------------------------------------------------------------
    def _read_snapshot(self) -> dict[str, int]:
        if not self.snapshot.exists():
            return {}
        doc = read_json(self.snapshot)
        if not isinstance(doc, dict):
            raise ConfigError(self.snapshot, "expected an object of enrollment id -> counter")
        for k, v in doc.items():
            if not is_ident(k) or isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= COUNTER_MAX:
                raise ConfigError(self.snapshot, "expected an object of enrollment id -> counter")
        return doc

    def read(self) -> dict[str, int]:
        """Snapshot merged with the journal's valid records, changing nothing (for status, inspect)."""
        counters = self._read_snapshot()
        if self.journal.exists():
            records, _ = parse_records(read_bytes(self.journal))
            merge(counters, records)
        return counters

    def open(self) -> dict[str, int]:
        """read(), then cut a torn tail off the journal and keep it open for appending. Only the one
        process that writes (the server, or a worker under the counters lock) may call this."""
        self.close()
        counters = self._read_snapshot()
        try:
            fd = os.open(self.journal, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(self.journal, f"cannot open: {e.strerror}") from None
        try:
            data = read_bytes(self.journal)
            records, valid = parse_records(data)
            if valid < len(data):
                self._check_torn_tail(data, valid)
                os.ftruncate(fd, valid)
                os.fsync(fd)
        except OSError as e:
            os.close(fd)
            raise ConfigError(self.journal, f"cannot repair: {e.strerror}") from None
        except ConfigError:
            os.close(fd)
            raise
        merge(counters, records)
        self.fd, self.offset, self.inode = fd, valid, os.fstat(fd).st_ino
        return counters

    def _check_torn_tail(self, data: bytes, valid: int) -> None:
        """A crash tears at most the last commit (GROUP_COMMIT_MAX records), whose knocks got no verdict.
        Valid records further behind a bad one mean corruption: cutting there would forget accepted
        counters and let their recorded SYNs pass again, so refuse instead."""
        size = RECORD.size
        if len(data) - valid <= GROUP_COMMIT_MAX * size:
            return
        for pos in range(valid + size, len(data) - size + 1, size):
            if parse_records(data[pos : pos + size])[0]:
                raise ConfigError(
                    self.journal, f"corrupt record at byte {valid} with valid records after it; refusing to "
                    "drop accepted counters (restore the file, or resync the affected clients)"
                )

    def catch_up(self) -> list[tuple[str, int]] | None:
        """Records other processes appended since our last look (call under the counters lock), or None
        when the journal was replaced by a compaction: then open() again for the whole state."""
        assert self.fd is not None
        try:
            if os.stat(self.journal).st_ino != self.inode:
                return None
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, size - self.offset, self.offset) if size > self.offset else b""
        except OSError as e:
            raise ConfigError(self.journal, f"cannot read: {e.strerror}") from None
        records, valid = parse_records(data)
        self.offset += valid
        return records

    # --- writing ---------------------------------------------------------------------------------------
    def append(self, items: Sequence[tuple[bytes, int]]) -> None:
        """Make `items` (enrollment id bytes, counter) durable: one write, one fdatasync."""
        if not items:
            return
        assert self.fd is not None
        data = b"".join(record(ident, counter) for ident, counter in items)
        try:
            written = os.pwrite(self.fd, data, self.offset)
            if written != len(data):
                raise OSError(28, "short write")
            os.fdatasync(self.fd)
        except OSError as e:
            raise ConfigError(self.journal, f"cannot write: {e.strerror}") from None
        self.offset += len(data)

    def needs_compaction(self, clients: int) -> bool:
        """True when the journal holds more records than max(COMPACT_MIN_RECORDS, clients): time for
        compact()."""
        return self.offset > RECORD.size * max(COMPACT_MIN_RECORDS, clients)

    def compact(self, counters: Iterable[tuple[str, int]]) -> None:
        """Write every client's counter as the new snapshot, then start an empty journal."""
        with atomic_writer(self.snapshot) as f:
            f.write(b"{")
            first = True
            for ident, counter in counters:
                f.write(f'{"" if first else ","}\n "{ident}": {counter}'.encode())
                first = False
            f.write(b"\n}\n")
        atomic_write(self.journal, b"")
        self.close()
        try:
            self.fd = os.open(self.journal, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise ConfigError(self.journal, f"cannot open: {e.strerror}") from None
        self.offset, self.inode = 0, os.fstat(self.fd).st_ino

    def close(self) -> None:
        """Close the journal (idempotent). Nothing is lost: every append() was synced before it returned."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def merge(counters: dict[str, int], records: Iterable[tuple[str, int]]) -> None:
    """Raise `counters` (enrollment hex -> counter) in place to each record's counter; never lowers one, so
    records may be merged in any order and more than once."""
    for ident, counter in records:
        if counter > counters.get(ident, 0):
            counters[ident] = counter
