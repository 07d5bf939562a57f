# Why: the counter journal is what stops a recorded SYN from passing twice across restarts and crashes.
# These tests hold it to that: every counter append() returned for is read back (after torn tails,
# compaction, a compaction cut short, and kill -9 in the middle of appending), and corruption that
# would silently forget accepted counters is refused with an error naming the file.
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stealth.constants import GROUP_COMMIT_MAX
from stealth.counterlog import RECORD, CounterLog, record
from stealth.errors import ConfigError
from stealth.store import atomic_write


def ident(n: int) -> bytes:
    return n.to_bytes(8, "big")


def log_in(tmp_path: Path) -> CounterLog:
    return CounterLog(tmp_path / "counters.json", tmp_path / "counters.log")


def test_append_and_read_back_the_maximum(tmp_path: Path) -> None:
    log = log_in(tmp_path)
    assert log.open() == {}
    log.append([(ident(1), 5), (ident(2), 3)])
    log.append([(ident(1), 4), (ident(2), 9)])  # a lower counter never lowers the stored one
    assert log.read() == {ident(1).hex(): 5, ident(2).hex(): 9}
    log.close()
    assert log_in(tmp_path).open() == {ident(1).hex(): 5, ident(2).hex(): 9}
    assert (tmp_path / "counters.log").stat().st_size == 4 * RECORD.size


@pytest.mark.parametrize("tail", [b"\x00" * 7, b"SCL1", record(ident(3), 77)[:-1] + b"\x00",
                                  record(ident(3), 77)[:20]])
def test_torn_tail_is_cut_and_appending_goes_on(tmp_path: Path, tail: bytes) -> None:
    log = log_in(tmp_path)
    log.open()
    log.append([(ident(1), 5)])
    log.close()
    with open(tmp_path / "counters.log", "ab") as f:
        f.write(tail)
    log = log_in(tmp_path)
    assert log.read() == {ident(1).hex(): 5}
    assert log.open() == {ident(1).hex(): 5}
    assert (tmp_path / "counters.log").stat().st_size == RECORD.size  # the torn bytes are gone
    log.append([(ident(1), 6)])
    log.close()
    assert log_in(tmp_path).read() == {ident(1).hex(): 6}


def test_a_torn_last_commit_with_records_landing_out_of_order_is_dropped(tmp_path: Path) -> None:
    """A crash may tear the first record of the last commit while later ones of it reached the disk.
    None of that commit's knocks got a verdict, so all of it goes."""
    log = log_in(tmp_path)
    log.open()
    log.append([(ident(1), 5)])
    log.close()
    batch = b"".join(record(ident(2), n) for n in range(1, 11))
    with open(tmp_path / "counters.log", "ab") as f:
        f.write(b"\xff" * RECORD.size + batch[RECORD.size :])
    assert log_in(tmp_path).open() == {ident(1).hex(): 5}


def test_corruption_far_behind_the_end_is_refused(tmp_path: Path) -> None:
    log = log_in(tmp_path)
    log.open()
    log.append([(ident(1), n) for n in range(1, 3)])
    log.append([(ident(2), n) for n in range(1, GROUP_COMMIT_MAX + 3)])
    log.close()
    path = tmp_path / "counters.log"
    data = bytearray(path.read_bytes())
    data[RECORD.size + 10] ^= 0x40  # flip a bit in the second record
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as e:
        log_in(tmp_path).open()
    assert str(path) in str(e.value) and "corrupt record at byte 24" in str(e.value)
    assert path.read_bytes() == bytes(data), "nothing is cut off a corrupt journal"


def test_compaction_keeps_everything_even_if_cut_short(tmp_path: Path) -> None:
    log = log_in(tmp_path)
    atomic_write(tmp_path / "counters.json", b'{"%s": 2}' % ident(9).hex().encode())
    assert log.open() == {ident(9).hex(): 2}
    log.append([(ident(1), 5), (ident(9), 3)])
    state = log.read()
    # cut short: the new snapshot is written but the old journal is still there
    log.compact(sorted(state.items()))
    assert (tmp_path / "counters.log").stat().st_size == 0
    assert log_in(tmp_path).read() == state
    log.append([(ident(1), 6)])
    log.close()
    atomic_write(tmp_path / "counters.log", b"".join(record(ident(1), n) for n in (5, 6)))
    assert log_in(tmp_path).read() == {ident(1).hex(): 6, ident(9).hex(): 3}


def test_catch_up_sees_other_writers_and_compactions(tmp_path: Path) -> None:
    a, b = log_in(tmp_path), log_in(tmp_path)
    a.open()
    b.open()
    a.append([(ident(1), 5)])
    assert b.catch_up() == [(ident(1).hex(), 5)]
    assert b.catch_up() == []
    b.append([(ident(2), 7)])
    assert a.catch_up() == [(ident(2).hex(), 7)]
    a.compact(sorted(a.read().items()))
    assert b.catch_up() is None  # the journal was replaced: b must open() again
    assert b.open() == {ident(1).hex(): 5, ident(2).hex(): 7}


WRITER = """
import sys
from pathlib import Path
from stealth.counterlog import CounterLog
d = Path(sys.argv[1])
log = CounterLog(d / "counters.json", d / "counters.log")
state = log.open()
n = state.get((1).to_bytes(8, "big").hex(), 0)
while True:
    n += 1
    log.append([((1).to_bytes(8, "big"), n), ((2).to_bytes(8, "big"), n)])
    if log.needs_compaction(0):
        log.compact(sorted(log.read().items()))
    sys.stdout.write(f"{n}\\n")  # acknowledged: only now may a verdict go out
    sys.stdout.flush()
"""


def test_kill_9_never_loses_an_acknowledged_counter(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.replace("from stealth.counterlog import CounterLog",
                                     "import stealth.counterlog as m; m.COMPACT_MIN_RECORDS = 64\n"
                                     "from stealth.counterlog import CounterLog"))
    acked = 0
    for round_ in range(12):
        p = subprocess.Popen([sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, text=True)
        time.sleep(0.05 + 0.02 * round_)
        os.kill(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        lines = [int(x) for x in out.split()]
        if lines:
            assert lines[0] > acked, "the writer resumed at or below an acknowledged counter"
            acked = max(acked, lines[-1])
        stored = log_in(tmp_path).read()
        assert stored.get(ident(1).hex(), 0) >= acked, (round_, stored, acked)
        assert stored.get(ident(2).hex(), 0) >= acked
    assert acked > 100, "the writer made too little progress to prove anything"
