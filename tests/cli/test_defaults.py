# Why: an administrator types no flags to find the server's files. These tests check the lookup order
# (flags, our environment variables, systemd's, /etc/stealth and /var/lib/stealth), that every command
# that needs no root finds the server from the environment alone (config and state in separate
# directories), that a state directory still holding its own server.toml keeps working, that `add-client`
# takes the server's ports by default and that `--profile-out -` writes the profile to standard output.
# They never touch the real /etc/stealth or /var/lib/stealth: the privileged test_status_json.py runs the
# real default paths, and the daemon, in a private mount namespace. The commands run in process (click's
# CliRunner), with the layout variables of the test's own environment taken away.
import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from stealth_cli import main

from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.server_state import ServerState, find_config, resolve_layout

NO_LAYOUT_ENV = ("STEALTH_STATE_DIR", "STEALTH_CONFIG_DIR", "STATE_DIRECTORY", "CONFIGURATION_DIRECTORY")
PCAP_HEADER = bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000")  # empty Ethernet capture


def stealth(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    unset: dict[str, str | None] = dict.fromkeys(NO_LAYOUT_ENV)
    return CliRunner().invoke(main, list(args), env={**unset, **env}, input=stdin, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(("flags", "environ", "expected"), [
    ((None, None), {}, ("/var/lib/stealth", "/etc/stealth")),
    ((None, None), {"STATE_DIRECTORY": "/run/a:/run/b", "CONFIGURATION_DIRECTORY": "/c"}, ("/run/a", "/c")),
    ((None, None), {"STATE_DIRECTORY": "/run/a"}, ("/run/a", "/etc/stealth")),  # systemd: config in /etc
    ((None, None), {"STEALTH_STATE_DIR": "/s", "STATE_DIRECTORY": "/run/a"}, ("/s", "/s")),  # self-contained
    ((None, None), {"STEALTH_STATE_DIR": "/s", "STEALTH_CONFIG_DIR": "/c", "CONFIGURATION_DIRECTORY": "/d"},
     ("/s", "/c")),
    ((Path("/f"), None), {"STEALTH_STATE_DIR": "/s"}, ("/f", "/f")),
    ((Path("/f"), Path("/g")), {"STEALTH_CONFIG_DIR": "/c"}, ("/f", "/g")),
    ((None, None), {"STEALTH_STATE_DIR": "", "STATE_DIRECTORY": ""}, ("/var/lib/stealth", "/etc/stealth")),
])
def test_lookup_order(flags: tuple[Path | None, Path | None], environ: dict[str, str],
                      expected: tuple[str, str]) -> None:
    assert resolve_layout(*flags, environ=environ) == (Path(expected[0]), Path(expected[1]))


def test_every_command_finds_the_server_from_the_environment(tmp_path: Path) -> None:
    env = {"STEALTH_STATE_DIR": str(tmp_path / "state"), "STEALTH_CONFIG_DIR": str(tmp_path / "etc")}
    ok(stealth(env, "server", "init", "--server-id", "envtest", "--ports", "22,2222"))
    assert sorted(p.name for p in (tmp_path / "etc").iterdir()) == ["server.toml"]
    assert not (tmp_path / "state" / "server.toml").exists()
    ok(stealth(env, "server", "add-client", "alice", "--profile-out", str(tmp_path / "alice.toml")))
    alice = Profile.from_doc("alice", tomllib.loads((tmp_path / "alice.toml").read_text()))
    assert alice.ports == (22, 2222)  # the server's ports, without --ports
    ok(stealth(env, "server", "add-clients", "--names-from", "-", "--profiles-dir", str(tmp_path / "p"),
               stdin="bob\ncarol\n"))
    ok(stealth(env, "server", "resync", "bob", "--counter", "7"))
    ok(stealth(env, "server", "revoke", "carol"))
    doc = json.loads(ok(stealth(env, "server", "status", "--json")))
    assert doc["config_file"] == str(tmp_path / "etc" / "server.toml")
    assert doc["state_dir"] == str(tmp_path / "state")
    assert {c["name"]: (c["ports"], c["last_counter"]) for c in doc["clients"]} == {
        "alice": ([22, 2222], 0), "bob": ([22, 2222], 7)}
    assert "  bob: ports 22,2222 last counter 7; never accepted" in ok(stealth(env, "server", "status"))
    (tmp_path / "empty.pcap").write_bytes(PCAP_HEADER)
    assert ok(stealth(env, "inspect", str(tmp_path / "empty.pcap"))) == ""
    confirm = stealth(env, "server", "rules", "confirm")  # finds the state dir: nothing waits there
    assert confirm.stderr.strip() == (f"stealth: {tmp_path / 'state' / 'rules.pending'}: no rule change is "
                                      "waiting for confirmation")
    missing = stealth({"STEALTH_STATE_DIR": str(tmp_path / "none")}, "server", "status")
    assert missing.stderr.strip() == (f"stealth: {tmp_path / 'none' / 'server.toml'}: does not exist; run "
                                      "'stealth server init' first")


def test_a_state_dir_with_its_own_server_toml_keeps_working(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(stealth({}, "server", "init", "--state-dir", str(state), "--server-id", "old", "--ports", "22"))
    assert (state / "server.toml").exists()
    # the systemd way: state from $STATE_DIRECTORY, config from $CONFIGURATION_DIRECTORY (still empty)
    env = {"STATE_DIRECTORY": str(state), "CONFIGURATION_DIRECTORY": str(tmp_path / "etc")}
    out = ok(stealth(env, "server", "add-client", "alice", "--profile-out", str(tmp_path / "a.toml")))
    assert "for ports 22;" in out
    doc = json.loads(ok(stealth(env, "server", "status", "--json")))
    assert doc["config_file"] == str(state / "server.toml")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "server.toml").write_text('server_id = "new"\nports = [22]\n')
    both = stealth(env, "server", "status")
    assert both.exit_code == 1 and len(both.stderr.strip().splitlines()) == 1
    assert "both exist" in both.stderr and str(state / "server.toml") in both.stderr
    with pytest.raises(ConfigError, match="both exist"):
        find_config(state, tmp_path / "etc")
    assert ServerState(state).config_path == state / "server.toml"  # named alone: self-contained


def test_profile_out_dash_writes_the_profile_to_stdout(tmp_path: Path) -> None:
    env = {"STEALTH_STATE_DIR": str(tmp_path / "state")}
    ok(stealth(env, "server", "init", "--server-id", "dash", "--ports", "22"))
    result = stealth(env, "server", "add-client", "alice", "--ports", "22", "--profile-out", "-")
    profile = Profile.from_doc("stdout", tomllib.loads(ok(result)))
    assert profile.name == "alice" and profile.server_id == "dash"
    enrolled = ServerState(tmp_path / "state").load_clients()["alice"].profile
    assert enrolled.key == profile.key  # the very key the server holds
    assert "written to standard output" in result.stderr
    assert not Path("-").exists() and not (tmp_path / "-").exists()
    devices = stealth(env, "server", "add-client", "bob", "--devices", "a,b", "--profile-out", "-")
    assert devices.exit_code == 1
    assert devices.stderr.strip().splitlines() == [
        "stealth: --profile-out -: with --devices each device gets a profile of its own; name a directory "
        "for them"]
    assert sorted(ServerState(tmp_path / "state").load_clients()) == ["alice"]  # nothing enrolled
