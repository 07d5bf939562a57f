# Why: `stealth server rotate` as an administrator meets it, in process (click's CliRunner): the new
# profile is written 0600 and never over a file, status (text and --json) shows the pending rotation,
# export-profile hands out the new key, bad input gets one line, a profile that cannot be written leaves
# no rotation behind, and clients.jsonl's rotation fields are checked like every other field.
import base64
import json
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stealth.cli import main
from stealth.clients_file import ClientRecord, ClientsReader, PendingRotation
from stealth.core.secret import Secret
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.server_state import ServerState
from stealth.store import read_toml

KEY_A, KEY_B = base64.b64encode(bytes(32)).decode(), base64.b64encode(bytes([1]) * 32).decode()


def stealth(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    init = stealth("server", "init", "--state-dir", str(state), "--server-id", "unit", "--ports", "22")
    assert init.exit_code == 0, init.output
    result = stealth("server", "add-client", "alice", "--state-dir", str(state), "--profile-out",
                     str(tmp_path / "alice.toml"))
    assert result.exit_code == 0, result.output
    return state


def profile(path: Path) -> Profile:
    return Profile.from_doc(path, read_toml(path, secret=True))


def test_rotate_writes_the_new_profile_and_status_shows_it(state_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "alice-new.toml"
    result = stealth("server", "rotate", "alice", "--overlap", "2d", "--state-dir", str(state_dir),
                     "--profile-out", str(out))
    assert result.exit_code == 0, result.output
    assert "the old key opens until" in result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    old, new = profile(tmp_path / "alice.toml"), profile(out)
    assert new.key != old.key and (new.name, new.ports, new.server_id) == (old.name, old.ports, old.server_id)
    for secret in (new.key.value.hex(), base64.b64encode(new.key.value).decode()):
        assert secret not in result.output
    doc = json.loads(stealth("server", "status", "--json", "--state-dir", str(state_dir)).output)
    (alice,) = doc["clients"]
    assert 2 * 86400 - 5 <= alice["rotation"]["old_key_unix_until"] - time.time() <= 2 * 86400
    text = stealth("server", "status", "--state-dir", str(state_dir)).output
    until = alice["rotation"]["old_key_until"]
    assert f"rotating: the new key was never used, the old one opens until {until}" in text
    again = tmp_path / "again.toml"
    assert stealth("server", "export-profile", "alice", "--state-dir", str(state_dir), "--profile-out",
                   str(again)).exit_code == 0
    assert profile(again).key == new.key, "a re-export during a rotation hands out the new key"


def test_rotate_refuses_bad_input_in_one_line(state_dir: Path, tmp_path: Path) -> None:
    taken = tmp_path / "alice.toml"
    before = (state_dir / "clients.jsonl").read_bytes()
    for args, needle in [
        (("bob", "--profile-out", str(tmp_path / "b.toml")), "no enrolled client named 'bob'"),
        (("alice", "--profile-out", str(taken)), "already exists"),
        (("alice", "--overlap", "soon", "--profile-out", str(tmp_path / "c.toml")), "expected a duration"),
        (("alice", "--overlap", "0s", "--profile-out", str(tmp_path / "c.toml")), "expected a duration"),
    ]:
        result = stealth("server", "rotate", *args, "--state-dir", str(state_dir))
        assert result.exit_code != 0
        assert needle in result.output, result.output
    assert (state_dir / "clients.jsonl").read_bytes() == before, "a refused rotation changes nothing"


def test_a_profile_that_cannot_be_written_leaves_no_rotation(state_dir: Path, tmp_path: Path) -> None:
    state = ServerState(state_dir)
    first = tmp_path / "first.toml"
    result = stealth("server", "rotate", "alice", "--state-dir", str(state_dir), "--profile-out", str(first))
    assert result.exit_code == 0, result.output
    pending = state.load_clients()["alice"].rotation
    blocked = tmp_path / "no-such-dir" / "alice.toml"
    result = stealth("server", "rotate", "alice", "--state-dir", str(state_dir), "--profile-out",
                     str(blocked))
    assert result.exit_code != 0 and str(blocked) in result.output
    assert state.load_clients()["alice"].rotation == pending, "the earlier rotation is put back"


def test_the_duration_forms(state_dir: Path, tmp_path: Path) -> None:
    state = ServerState(state_dir)
    forms = [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("45", 45)]
    for n, (text, seconds) in enumerate(forms):
        out = tmp_path / f"p{n}.toml"
        assert stealth("server", "rotate", "alice", "--overlap", text, "--state-dir", str(state_dir),
                       "--profile-out", str(out)).exit_code == 0
        rotation = state.load_clients()["alice"].rotation
        assert rotation is not None
        assert seconds - 5 <= rotation.until_s - time.time() <= seconds


def line(**fields: object) -> bytes:
    doc = {"name": "a", "key": KEY_A, "enrollment": "0123456789abcdef", "ports": [22], **fields}
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("fields", "needle"), [
    ({"next_key": KEY_B, "next_enrollment": "fedcba9876543210"}, "rotate_until: missing"),
    ({"next_key": "short", "next_enrollment": "fedcba9876543210", "rotate_until": 5}, "next_key: not valid"),
    ({"next_key": KEY_B[:24], "next_enrollment": "fedcba9876543210", "rotate_until": 5}, "key: must be 32"),
    ({"next_key": KEY_B, "next_enrollment": "XYZ", "rotate_until": 5}, "next_enrollment: must be 16"),
    ({"next_key": KEY_B, "next_enrollment": "0123456789abcdef", "rotate_until": 5}, "must differ"),
    ({"next_key": KEY_B, "next_enrollment": "fedcba9876543210", "rotate_until": "x"}, "rotate_until: must"),
])
def test_rotation_fields_are_checked(tmp_path: Path, fields: dict[str, object], needle: str) -> None:
    path = tmp_path / "clients.jsonl"
    with pytest.raises(ConfigError) as e:
        ClientsReader(path, "unit").record(2, line(**fields))
    message = str(e.value)
    assert str(path) in message and "line 2 (a)" in message and needle in message, message
    assert KEY_B not in message


def test_settle_folds_only_a_finished_rotation() -> None:
    rotating = line(next_key=KEY_B, next_enrollment="fedcba9876543210", rotate_until=1000)
    record = ClientsReader(Path("c"), "unit").record(2, rotating)
    assert record.rotation == PendingRotation(Secret(bytes([1]) * 32), "fedcba9876543210", 1000)
    assert record.settle({}, 999) is record
    assert record.settle({"0123456789abcdef": 7}, 999) is record, "old-key knocks do not end it"
    for counters, now in (({"fedcba9876543210": 1}, 999), ({}, 1000)):
        done = record.settle(counters, now)
        assert done == ClientRecord("a", Secret(bytes([1]) * 32), "fedcba9876543210", (22,))
        assert done.to_doc() == json.loads(line(key=KEY_B, enrollment="fedcba9876543210"))
