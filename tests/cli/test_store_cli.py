# Why: the admin and client command lines as a user meets them: files are created 0600, bad or unsafe
# files get one line naming the file and the fault with a non-zero exit, and no secret is ever printed.
# In process: `stealth` through click's CliRunner, `stealth-connect` through its main(argv) with the
# standard streams captured; test_entry_points.py runs the installed commands themselves.
import base64
import contextlib
import os
import socket
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from stealth_cli import main
from stealth_connect.cli import main as connect_main

from stealth.core.secret import Secret
from stealth.core.table import ClientSpec
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.server_state import ServerState
from stealth.store import atomic_write, read_bytes, read_toml

HEADER = b'{"format": "stealth-clients-v1"}\n'
GOOD_LINE = (b'{"name":"a","key":"' + base64.b64encode(bytes(32)) + b'","enrollment":"0123456789abcdef",'
             b'"ports":[22]}\n')


@dataclass
class Connected:
    """A run of stealth-connect's main(): its exit status and standard streams."""

    exit_code: int
    stdout: str
    stderr: str


def cli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """`stealth ARGS` (the root command: client, server, inspect) in process."""
    return CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)


@contextlib.contextmanager
def devnull_stdin() -> Iterator[None]:
    """File descriptor 0 on /dev/null for the block, as a process started with stdin=DEVNULL has it: the
    relay reads the descriptor itself, whatever pytest's capture left there (a tty under -s)."""
    saved = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(devnull, 0)
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(devnull)


def connect(capfd: pytest.CaptureFixture[str], *args: str) -> Connected:
    """`stealth-connect ARGS` in process; capfd, since the relay writes file descriptor 1 itself."""
    capfd.readouterr()
    with devnull_stdin():
        code = connect_main(list(args))
    out, err = capfd.readouterr()
    return Connected(code, out, err)


def one_line_error(result: Result | Connected, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def server(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    result = cli("server", "init", "--state-dir", str(state), "--server-id", "unit", "--ports", "22,2222")
    assert result.exit_code == 0, result.stderr
    return state


def enroll(state: Path, name: str, out: Path, *extra: str) -> Profile:
    result = cli("server", "add-client", name, "--ports", "22", "--state-dir", str(state),
                 "--profile-out", str(out), *extra)
    assert result.exit_code == 0, result.stderr
    return Profile.from_doc(out, read_toml(out, secret=True))


def test_atomic_write_creates_0600_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temp file left behind


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "clients.jsonl"
    atomic_write(path, b"x = 1\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        read_bytes(path, secret=True)
    assert str(path) in str(e.value) and "chmod 600" in str(e.value)


def test_enrolled_files_and_profile_are_private(server: Path, tmp_path: Path) -> None:
    profile = enroll(server, "alice", tmp_path / "alice.toml")
    for path in [tmp_path / "alice.toml", *server.iterdir()]:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
    assert len(profile.key.value) == 32
    assert profile.server_id == "unit" and profile.ports == (22,)
    other = enroll(server, "bob", tmp_path / "bob.toml")
    assert other.key != profile.key  # each client its own random key


def test_add_client_refuses_unprotected_port_and_duplicates(server: Path, tmp_path: Path) -> None:
    bad = cli("server", "add-client", "eve", "--ports", "6379", "--state-dir", str(server),
              "--profile-out", str(tmp_path / "eve.toml"))
    one_line_error(bad, "server.toml", "6379")
    enroll(server, "alice", tmp_path / "a.toml")
    dup = cli("server", "add-client", "alice", "--ports", "22", "--state-dir", str(server),
              "--profile-out", str(tmp_path / "a2.toml"))
    one_line_error(dup, "already enrolled")


@pytest.mark.parametrize(
    ("filename", "content", "fault"),
    [
        ("server.toml", b"server_id = [", "invalid TOML"),
        ("server.toml", b'server_id = "x"\nports = []\n', "ports"),
        ("server.toml", b'server_id = "x"\nports = [22]\nwindow = 0\n', "window"),
        ("server.toml", b'server_id = "x"\nports = [22]\n[backends]\n"22" = "198.51.100.1:22"\n', "loopback"),
        ("server.toml", b'server_id = "x"\nports = [22]\n[backends]\n"23" = "127.0.0.1:22"\n',
         "port 23 is not a protected port"),
        ("server.toml", b'server_id = "x"\nports = [22]\n[backends]\n"22" = "unix:rel"\n', "absolute path"),
        ("server.toml", b'server_id = "x"\nports = [22]\naccept_port = 22\n', "accept_port"),
        ("clients.jsonl", b"\xff\xfe garbage", "line 1: expected the header"),
        ("clients.jsonl", HEADER + b'{"name": "a", "key": "no base64!", "enrollment": "00", "ports": [22]}\n',
         "line 2 (a): key"),
        ("clients.jsonl", HEADER + b"{truncated\n", "line 2: invalid JSON"),
        ("clients.jsonl", HEADER + GOOD_LINE.replace(b'"ports":[22]', b'"ports":[]'), "line 2 (a): ports"),
        ("clients.jsonl", HEADER + GOOD_LINE.replace(b'"ports"', b'"potrs"'), "unknown field 'potrs'"),
        ("clients.jsonl", HEADER + GOOD_LINE.replace(b'0123456789abcdef', b'xyz'), "enrollment"),
        ("clients.jsonl", HEADER + GOOD_LINE + GOOD_LINE, "enrolled twice"),
        ("counters.json", b"{truncated", "invalid JSON"),
        ("counters.json", b'{"x": -1}', "counter"),
        ("counters.json", b'{"0123456789abcdef": -1}', "counter"),
    ],
)
def test_bad_state_files_give_one_line_naming_the_file(
    server: Path, filename: str, content: bytes, fault: str
) -> None:
    atomic_write(server / filename, content)
    result = cli("server", "status", "--state-dir", str(server))
    one_line_error(result, str(server / filename), fault)


def test_group_readable_clients_file_is_refused(server: Path) -> None:
    (server / "clients.jsonl").chmod(0o640)
    one_line_error(cli("server", "status", "--state-dir", str(server)), "clients.jsonl", "readable by group")


def test_missing_state_dir(tmp_path: Path) -> None:
    one_line_error(cli("server", "status", "--state-dir", str(tmp_path / "nope")), "stealth server init")


def test_add_clients_in_bulk(server: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("bulk1\nbulk2\n\nbulk3\n")
    out = tmp_path / "profiles"
    r = cli("server", "add-clients", "--names-from", str(names), "--ports", "22", "--state-dir", str(server),
            "--profiles-dir", str(out))
    assert r.exit_code == 0, r.stderr
    clients = ServerState(server).load_clients()
    assert sorted(clients) == ["bulk1", "bulk2", "bulk3"]
    keys = set()
    for name, e in clients.items():
        path = out / f"{name}.toml"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        profile = Profile.from_doc(path, read_toml(path, secret=True))
        assert profile.key == e.profile.key and profile.ports == (22,)
        keys.add(profile.key.value)
    assert len(keys) == 3
    before = (server / "clients.jsonl").read_bytes()
    names.write_text("bulk4\nbulk2\n")
    again = cli("server", "add-clients", "--names-from", str(names), "--ports", "22",
                "--state-dir", str(server), "--profiles-dir", str(tmp_path / "more"))
    one_line_error(again, "clients.jsonl", "'bulk2' is already enrolled")
    names.write_text("bulk5\nbulk5\n")
    twice = cli("server", "add-clients", "--names-from", str(names), "--ports", "22",
                "--state-dir", str(server), "--profiles-dir", str(tmp_path / "more"))
    one_line_error(twice, "'bulk5' is given twice")
    assert (server / "clients.jsonl").read_bytes() == before, "a refused bulk enrolment changes nothing"


def test_revoke_and_resync(server: Path, tmp_path: Path) -> None:
    enroll(server, "alice", tmp_path / "a.toml")
    one_line_error(cli("server", "revoke", "nobody", "--state-dir", str(server)), "nobody")
    assert cli("server", "resync", "alice", "--counter", "40", "--state-dir", str(server)).exit_code == 0
    assert cli("server", "resync", "alice", "--counter", "10", "--state-dir", str(server)).exit_code == 0
    assert ServerState(server).load_clients()["alice"].counter_floor == 40  # never moves back
    assert "last counter 40" in cli("server", "status", "--state-dir", str(server)).stdout
    assert cli("server", "revoke", "alice", "--state-dir", str(server)).exit_code == 0
    assert "alice" not in ServerState(server).load_clients()
    assert "clients: 0" in cli("server", "status", "--state-dir", str(server)).stdout


def test_no_secret_in_output_or_repr(server: Path, tmp_path: Path) -> None:
    profile = enroll(server, "alice", tmp_path / "a.toml")
    b64 = base64.b64encode(profile.key.value).decode()
    outputs = [
        cli("server", "status", "--state-dir", str(server)),
        cli("client", "import", str(tmp_path / "a.toml"), "--host", "h.example", "--state-dir",
            str(tmp_path / "c")),
    ]
    for out in outputs:
        assert b64 not in out.stdout + out.stderr
        assert profile.key.value.hex() not in out.stdout + out.stderr
    spec = ClientSpec(profile.name, profile.key, profile.binding, profile.ports)
    for text in (repr(profile), str(profile), repr(spec), repr(Secret(profile.key.value))):
        assert b64 not in text and profile.key.value.hex() not in text and str(profile.key.value) not in text


def test_client_import_uses_state_dir_env_and_xdg(server: Path, tmp_path: Path) -> None:
    enroll(server, "alice", tmp_path / "a.toml")
    env_dir = tmp_path / "from-env"
    ok = cli("client", "import", str(tmp_path / "a.toml"), "--host", "Srv.Example",
             env={"STEALTH_CLIENT_DIR": str(env_dir)})
    assert ok.exit_code == 0, ok.stderr
    stored = env_dir / "hosts" / "srv.example.toml"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg), "STEALTH_CLIENT_DIR": ""}
    assert cli("client", "import", str(tmp_path / "a.toml"), "--host", "h", env=env).exit_code == 0
    assert (xdg / "stealth" / "hosts" / "h.toml").exists()


def test_stealth_connect_without_profile(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    result = connect(capfd, "198.51.100.77", "22", "--state-dir", str(tmp_path))
    one_line_error(result, "no stealth profile", "stealth client import")


def test_stealth_connect_port_not_in_profile_connects_plainly(server: Path, tmp_path: Path,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    """ssh's habit: one Host block for every port. A port the profile does not cover gets an ordinary
    connection (no knock, no counter spent), relayed like a knocked one."""
    enroll(server, "alice", tmp_path / "a.toml")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"SSH-2.0-plain\n")

        threading.Thread(target=serve, daemon=True).start()
        result = connect(capfd, "127.0.0.1", str(port), "--profile", str(tmp_path / "a.toml"), "--state-dir",
                         str(tmp_path / "c"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "SSH-2.0-plain\n"
    assert not (tmp_path / "c" / "counters").exists()  # nothing spent


def test_inspect_rejects_a_non_capture(server: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all")
    one_line_error(cli("inspect", str(junk), "--state-dir", str(server)), str(junk))


def test_counter_file_is_one_per_key_and_saved_before_use(server: Path, tmp_path: Path) -> None:
    from stealth_connect.profiles import ClientStore, read_counter, take_counter

    profile = enroll(server, "alice", tmp_path / "a.toml")
    store = ClientStore(tmp_path / "c")
    path = store.counter_path(profile)
    assert [take_counter(path) for _ in range(3)] == [1, 2, 3]
    assert read_counter(path).last_used == 3  # read back from the file (tests/client/test_client_counter.py)
    assert [p.name for p in (tmp_path / "c" / "counters").glob("*.ctr")] == [path.name]


def test_export_profile_writes_the_same_profile_again_and_never_over_a_file(server: Path,
                                                                            tmp_path: Path) -> None:
    original = enroll(server, "alice", tmp_path / "a.toml", "--bind-source", "198.51.100.2")
    out = tmp_path / "again.toml"
    result = cli("server", "export-profile", "alice", "--state-dir", str(server), "--profile-out", str(out))
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = Profile.from_doc(out, read_toml(out, secret=True))
    assert again == original  # key, server id, ports and binding: every field
    assert original.key.value.hex() not in result.stdout + result.stderr
    one_line_error(cli("server", "export-profile", "alice", "--state-dir", str(server), "--profile-out",
                       str(out)), str(out), "refusing to overwrite")
    one_line_error(cli("server", "export-profile", "mallory", "--state-dir", str(server), "--profile-out",
                       str(tmp_path / "m.toml")), "no enrolled client named 'mallory'")
    assert not (tmp_path / "m.toml").exists()
    cli("server", "revoke", "alice", "--state-dir", str(server))
    one_line_error(cli("server", "export-profile", "alice", "--state-dir", str(server), "--profile-out",
                       str(tmp_path / "r.toml")), "no enrolled client named 'alice'")


def test_a_profile_goes_from_export_to_import_through_a_pipe(server: Path, tmp_path: Path) -> None:
    """export-profile - | client import -: the key never rests in a file with the shell's umask."""
    original = enroll(server, "alice", tmp_path / "a.toml")
    exported = cli("server", "export-profile", "alice", "--state-dir", str(server), "--profile-out", "-")
    assert exported.exit_code == 0, exported.stderr
    client = tmp_path / "client"
    imported = cli("client", "import", "-", "--host", "h.example", "--state-dir", str(client),
                   stdin=exported.stdout)
    assert imported.exit_code == 0, imported.stderr
    stored = client / "hosts" / "h.example.toml"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert Profile.from_doc(stored, read_toml(stored, secret=True)) == original
    garbage = cli("client", "import", "-", "--host", "g", "--state-dir", str(client), stdin="key = [\n")
    one_line_error(garbage, "standard input")
    assert not (client / "hosts" / "g.toml").exists()
