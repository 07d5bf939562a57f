# Why: the client's counter file (client/stealth_connect/counter.py) is what stops a client from ever
# putting one counter into two SYNs. These tests hold it to that under torn and corrupted slots,
# concurrent takers in several processes, and kill -9 at random instants; and check the in-process
# profile cache never serves a changed or unsafe profile.
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from stealth_connect import counter as ctr
from stealth_connect import profiles
from stealth_connect.profiles import (
    ClientStore,
    CounterState,
    load_profile,
    read_counter,
    record_success,
    take_counter,
)

from stealth.core.secret import Secret
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.store import write_toml
from tests.conftest import ROOT, stealth_bin

CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "client")])}


def slots(path: Path) -> list[tuple[int, int, int] | None]:
    """(sequence, last_used, last_ok) of slot A and slot B, None where the slot is invalid."""
    raw = path.read_bytes()
    out: list[tuple[int, int, int] | None] = []
    for off in ctr.SLOT_OFFSETS:
        s = ctr._unpack_slot(raw[off : off + ctr.BLOCK])
        out.append(None if s is None else (s.sequence, s.last_used, s.last_ok))
    return out


def current_offset(path: Path) -> int:
    """Offset of the slot a reader takes (valid, highest sequence)."""
    valid = [(s, off) for s, off in zip(slots(path), ctr.SLOT_OFFSETS, strict=True) if s is not None]
    return max(valid)[1]


def overwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def torn_record(path: Path, offset: int, last_used: int) -> bytes:
    """What a write of the next record to `offset` leaves if it stops half-way: the first half of the new
    record over the rest of the old one."""
    new = ctr._pack_slot(10**6, last_used, 0)
    old = path.read_bytes()[offset : offset + len(new)]
    return new[: len(new) // 2] + old[len(new) // 2 :]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "counters" / "0123456789abcdef.ctr"


def test_fresh_file_counts_from_one_and_is_fixed_size_0600(path: Path) -> None:
    assert read_counter(path) == CounterState(0, 0)
    assert not path.parent.exists()  # reading creates nothing
    assert [take_counter(path) for _ in range(5)] == [1, 2, 3, 4, 5]
    st = path.stat()
    assert st.st_size == ctr.FILE_BYTES
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_counter(path) == CounterState(5, 0)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.with_suffix(".lock").name]


def test_writes_alternate_slots_and_keep_the_previous_value(path: Path) -> None:
    take_counter(path)
    written = []
    for expect in range(2, 8):
        before = current_offset(path)
        assert take_counter(path) == expect
        after = current_offset(path)
        assert after != before
        written.append(after)
        cur, prev = slots(path)[ctr.SLOT_OFFSETS.index(after)], slots(path)[ctr.SLOT_OFFSETS.index(before)]
        assert cur is not None and prev is not None
        assert (cur[1], prev[1]) == (expect, expect - 1)
        assert cur[0] == prev[0] + 1
    assert written == [ctr.SLOT_OFFSETS[i % 2] for i in range(len(written))]


def test_take_counter_syncs_the_written_slot_before_returning(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    take_counter(path)
    events: list[str] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        events.append(f"pwrite@{offset}")
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        events.append("fdatasync")
        real_fdatasync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    target = ctr.SLOT_OFFSETS[1 - ctr.SLOT_OFFSETS.index(current_offset(path))]
    take_counter(path)
    assert events == [f"pwrite@{target}", "fdatasync"]
    events.clear()
    record_success(path, 2)  # diagnostics: its own block, no sync on the critical path
    assert events == [f"pwrite@{ctr.OK_OFFSET}"]


@pytest.mark.parametrize("slot", [0, 1])
def test_torn_write_of_either_slot_never_reuses_a_counter(path: Path, slot: int) -> None:
    handed = [take_counter(path) for _ in range(3 + slot)]  # the next write goes to `slot`
    target = ctr.SLOT_OFFSETS[1 - ctr.SLOT_OFFSETS.index(current_offset(path))]
    assert target == ctr.SLOT_OFFSETS[slot]
    overwrite(path, target, torn_record(path, target, handed[-1] + 1))
    assert slots(path)[slot] is None
    assert read_counter(path).last_used >= handed[-1]
    nxt = take_counter(path)
    assert nxt > handed[-1]
    assert all(s is not None for s in slots(path))  # repaired, so a later bad slot is still safe:
    overwrite(path, current_offset(path), b"\0" * 64)
    assert take_counter(path) > nxt


@pytest.mark.parametrize("slot", [0, 1])
def test_corrupting_either_slot_even_the_current_one_never_reuses_a_counter(path: Path, slot: int) -> None:
    handed = [take_counter(path) for _ in range(4)]
    overwrite(path, ctr.SLOT_OFFSETS[slot], os.urandom(ctr._SLOT.size + 4))
    assert slots(path)[slot] is None
    state = read_counter(path)
    assert state.last_used >= handed[-1]  # one counter may be skipped, none reused
    assert take_counter(path) > handed[-1]


@pytest.mark.parametrize("junk", [b"\0" * 40, b"stlctr01" + b"\xff" * 32])
def test_both_slots_bad_is_an_error_naming_the_file_and_nothing_is_reset(path: Path, junk: bytes) -> None:
    take_counter(path)
    for off in ctr.SLOT_OFFSETS:
        overwrite(path, off, junk)
    image = path.read_bytes()
    for fn in (lambda: take_counter(path), lambda: read_counter(path), lambda: record_success(path, 1)):
        with pytest.raises(ConfigError) as e:
            fn()
        assert str(path) in str(e.value) and "corrupt" in str(e.value)
        assert "\n" not in str(e.value)
    assert path.read_bytes() == image  # never silently restarted at 0


def test_stealth_connect_exits_non_zero_with_one_line_on_a_corrupt_counter_file(tmp_path: Path) -> None:
    prof = Profile(name="alice", server_id="unit", key=Secret(os.urandom(32)), ports=(22,))
    write_toml(tmp_path / "a.toml", prof.to_doc())
    path = ClientStore(tmp_path / "c").counter_path(prof)
    take_counter(path)
    for off in ctr.SLOT_OFFSETS:
        overwrite(path, off, b"\0" * 64)
    r = subprocess.run([stealth_bin("stealth-connect"), "--profile", str(tmp_path / "a.toml"), "--state-dir",
                        str(tmp_path / "c"), "198.51.100.9", "22"], capture_output=True, text=True,
                       check=False, stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0] and "corrupt" in lines[0]


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: ctr.BLOCK]), "not a stealth counter file"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\0"), "not a stealth counter file"),
        (lambda p: p.chmod(0o620), "writable by group or others"),
        (lambda p: p.chmod(0o602), "writable by group or others"),
        (lambda p: (p.unlink(), p.mkdir()), "is a directory"),
    ],
)
def test_unsafe_or_foreign_counter_file_is_refused(path: Path, damage: Any, needle: str) -> None:
    take_counter(path)
    damage(path)
    with pytest.raises(ConfigError) as e:
        take_counter(path)
    assert str(path) in str(e.value) and needle in str(e.value)


def test_record_success_keeps_the_highest_answered_counter(path: Path) -> None:
    for _ in range(5):
        take_counter(path)
    record_success(path, 3)
    assert read_counter(path) == CounterState(5, 3)
    record_success(path, 2)  # an older knock answered late does not move it back
    record_success(path, 9)  # never above last_used
    assert read_counter(path) == CounterState(5, 3)
    take_counter(path)  # folds last_ok into the durable slot
    assert [s[2] for s in slots(path) if s is not None and s[1] == 6] == [3]
    overwrite(path, ctr.OK_OFFSET, b"\xff" * 32)  # a torn diagnostics block loses only the newest hint
    assert read_counter(path) == CounterState(6, 3)


def test_random_takes_successes_and_torn_writes_stay_strictly_increasing(path: Path) -> None:
    rng = random.Random(4)  # noqa: S311 -- reproducible test input, not a secret
    handed: list[int] = []
    for _ in range(300):
        op = rng.random()
        if op < 0.6 or not handed:
            handed.append(take_counter(path))
        elif op < 0.8:
            record_success(path, rng.choice(handed))
        else:  # a write to the next slot that stopped half-way
            target = ctr.SLOT_OFFSETS[1 - ctr.SLOT_OFFSETS.index(current_offset(path))]
            overwrite(path, target, torn_record(path, target, handed[-1] + 1))
        assert read_counter(path).last_used >= handed[-1]
    assert handed == sorted(set(handed))


def test_in_process_threads_take_distinct_counters(path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda _: take_counter(path), range(200)))
    assert sorted(got) == list(range(1, 201))


TAKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from stealth_connect.counter import take_counter
    path, n = Path(sys.argv[1]), int(sys.argv[2])
    for _ in range(n):
        c = take_counter(path)
        sys.stdout.write(f"{c}\\n")
        sys.stdout.flush()
""")


def test_concurrent_processes_take_distinct_counters(path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", TAKER, str(path), "150"], stdout=subprocess.PIPE,
                              text=True, env=CHILD_ENV) for _ in range(4)]
    got: list[int] = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        got += [int(x) for x in out.split()]
    assert sorted(got) == list(range(1, 601))
    assert read_counter(path).last_used == 600


def test_kill_9_at_random_instants_never_hands_out_a_counter_twice(path: Path) -> None:
    """Two takers per round, one of them killed with SIGKILL after a random delay (seeded). A counter a
    taker printed was returned by take_counter, i.e. could have gone into a SYN."""
    rng = random.Random(9)  # noqa: S311 -- reproducible kill instants, not a secret
    handed: list[int] = []
    killed = 0
    for _ in range(25):
        victim = subprocess.Popen([sys.executable, "-c", TAKER, str(path), "100000"],
                                  stdout=subprocess.PIPE, text=True, env=CHILD_ENV)
        peer = subprocess.Popen([sys.executable, "-c", TAKER, str(path), "40"], stdout=subprocess.PIPE,
                                text=True, env=CHILD_ENV)
        assert victim.stdout is not None
        first = victim.stdout.readline()  # the victim is up and taking
        time.sleep(rng.uniform(0, 0.03))
        victim.send_signal(signal.SIGKILL)
        out, _ = victim.communicate(timeout=60)
        killed += victim.returncode == -signal.SIGKILL
        handed += [int(x) for x in (first + out).split()]
        peer_out, _ = peer.communicate(timeout=60)
        assert peer.returncode == 0
        handed += [int(x) for x in peer_out.split()]
        state = read_counter(path)  # never lost, never corrupt after a kill
        assert state.last_used >= max(handed)
    assert killed == 25
    assert len(handed) == len(set(handed)), "a counter was handed out twice"
    assert take_counter(path) > max(handed)


def test_counter_path_is_one_file_per_key(tmp_path: Path) -> None:
    store = ClientStore(tmp_path)
    a = Profile(name="a", server_id="s", key=Secret(b"\1" * 32), ports=(22,))
    b = Profile(name="a", server_id="s", key=Secret(b"\2" * 32), ports=(22,))
    assert store.counter_path(a) == store.counter_path(a)
    assert store.counter_path(a) != store.counter_path(b)
    assert store.counter_path(a).suffix == ".ctr" and store.counter_path(a).parent == tmp_path / "counters"


def test_profile_cache_never_serves_a_changed_or_unsafe_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles, "RACY_SECONDS", 0)
    monkeypatch.setattr(profiles, "_profiles", {})
    path = tmp_path / "a.toml"
    one = Profile(name="a", server_id="s", key=Secret(b"\1" * 32), ports=(22,))
    two = Profile(name="a", server_id="s", key=Secret(b"\2" * 32), ports=(22,))
    write_toml(path, one.to_doc())
    first = load_profile(path)
    assert load_profile(path) is first  # unchanged: reused
    write_toml(path, two.to_doc())  # re-issued: same size, new key
    assert load_profile(path).key == two.key
    path.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        load_profile(path)
    assert "readable by group or others" in str(e.value)
    path.chmod(0o600)
    assert load_profile(path).key == two.key


def test_profile_changed_within_the_racy_window_is_read_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles, "_profiles", {})
    path = tmp_path / "a.toml"
    write_toml(path, Profile(name="a", server_id="s", key=Secret(b"\1" * 32), ports=(22,)).to_doc())
    assert load_profile(path) is not load_profile(path)  # just written: not cached
