# Why: key rotation as an administrator and a user meet it, with the real server, netfilter, sshd and
# OpenSSH in namespaces: `stealth server rotate` while the daemon runs; the old and the new profile both
# log in during the overlap; after the new key's first login, or after the deadline, the old profile is
# refused (the lab resets unused ports, so a refused knock gets the kernel's RST); a profile exported
# again during a rotation logs in; and the daemon's log says when each old key stopped opening.
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_refusal_log import fail2ban_regex

pytestmark = pytest.mark.privileged

KNOCK_TIMEOUT_S = 4  # a refused knock is answered by a RST at once; this only bounds a lost one


@pytest.fixture(scope="module")
def sl() -> Iterator[Any]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="rotation", clients=("alice", "bob")) as lab:
        yield lab


def login(sl: Any, cdir: Path) -> bool:
    """One ssh login with the profile stored in `cdir`."""
    argv = sl.ssh_argv("alice", sl.srv.ip4)
    argv = [a.replace(str(sl.client_dirs["alice"]), str(cdir)).replace(
        " %h %p", f" --timeout {KNOCK_TIMEOUT_S} %h %p") for a in argv]
    r = sl.cli.run(argv, check=False, timeout=60, stdin=subprocess.DEVNULL)
    return r.returncode == 0 and "stealth-ok" in r.stdout


def rotate(sl: Any, name: str, overlap: str) -> Path:
    """`stealth server rotate`, and the new profile imported into a client directory of its own once the
    running daemon has reloaded (its log says so)."""
    reloads = sl.server_log_path.read_text().count("reloaded:")
    profile = sl.lab.tmp / f"{name}-{time.monotonic_ns()}.toml"
    sl.stealth("server", "rotate", name, "--overlap", overlap, "--state-dir", str(sl.state_dir),
               "--profile-out", str(profile))
    deadline = time.monotonic() + 10
    while sl.server_log_path.read_text().count("reloaded:") <= reloads:
        assert time.monotonic() < deadline, "the daemon did not reload"
        time.sleep(0.1)
    return imported(sl, profile)


def imported(sl: Any, profile: Path) -> Path:
    cdir: Path = sl.lab.tmp / f"client-{profile.stem}"
    sl.stealth("client", "import", str(profile), "--host", sl.srv.ip4, "--state-dir", str(cdir))
    return cdir


def test_old_and_new_key_log_in_until_the_new_one_is_used(sl: Any) -> None:
    old = sl.client_dirs["alice"]
    assert login(sl, old)
    new = rotate(sl, "alice", "1d")
    assert login(sl, old), "the old key opens during the overlap"
    assert login(sl, new), "the new key opens at once"
    assert not login(sl, old), "the new key's first login ended the old key"
    refused = f"refused reason=revoked client=alice port=22 src=[{sl.cli.ip4}]:"
    assert sl.server_log_path.read_text().count(refused) == 1, "the old key's knock is logged, once"
    assert sl.cli.ip4 in fail2ban_regex(sl.server_log_path), "and the shipped fail2ban filter reads it"
    assert login(sl, new)
    again = sl.lab.tmp / "alice-exported.toml"
    sl.stealth("server", "export-profile", "alice", "--state-dir", str(sl.state_dir), "--profile-out",
               str(again))
    assert login(sl, imported(sl, again)), "a re-exported profile (the new key) logs in"
    log = sl.server_log_path.read_text()
    assert "key rotated client=alice: its new key was used, the old key no longer opens" in log


def test_the_old_key_stops_at_the_deadline_and_the_new_one_opens_after_it(sl: Any) -> None:
    old = sl.client_dirs["bob"]
    rotated_at = time.monotonic()
    new = rotate(sl, "bob", "5s")
    assert login(sl, old), "the old key opens before the deadline"
    time.sleep(max(0.0, rotated_at + 5 + 2.5 - time.monotonic()))  # the daemon checks once a second
    assert not login(sl, old), "the deadline ended the old key"
    assert "key rotated client=bob: the old key's deadline passed" in sl.server_log_path.read_text()
    assert login(sl, new), "the new key, never used before the deadline, opens after it"
    status = json.loads(sl.stealth("server", "status", "--json", "--state-dir", str(sl.state_dir)).stdout)
    assert {c["name"]: c["rotation"] for c in status["clients"]} == {"alice": None, "bob": None}
