# Why: anti-lockout. A rule change made with `stealth server rules apply` is rolled back unless it is
# confirmed in time, exactly to the rules that were there before; a confirmed change stays.
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from tests.conftest import lab_fixture

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

pytestmark = pytest.mark.privileged


sl = lab_fixture("apply", init_args=("--unauth", "drop"), scope="function")


def our_rules(sl: "StealthLab") -> str:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        lines = sl.srv.run([tool]).stdout.splitlines()
        out += [ln for ln in lines if "STEALTH" in ln and ln.startswith("-A")]
    return "\n".join(out)


def widen_ports(sl: "StealthLab") -> None:
    from stealth.store import read_toml, write_toml

    path = sl.state_dir / "server.toml"
    doc = read_toml(path)
    doc["ports"] = [22, 2222]
    write_toml(path, doc)


def apply_argv(sl: "StealthLab", seconds: str) -> list[str]:
    from scripts.lib.stealthlab import tool

    return [tool("stealth"), "server", "rules", "apply", "--state-dir", str(sl.state_dir), "--confirm-within",
            seconds]


def test_unconfirmed_change_rolls_back(sl: "StealthLab") -> None:
    before = our_rules(sl)
    assert "22" in before and "2222" not in before
    widen_ports(sl)
    proc = sl.srv.popen(apply_argv(sl, "3"), stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    during = our_rules(sl)
    assert "22,2222" in during  # the change is live while it waits
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "not confirmed" in err
    assert our_rules(sl) == before  # exactly the old rules are back
    assert sl.ssh("alice", sl.srv.ip4).returncode == 0  # and they still work


def test_confirmed_change_stays(sl: "StealthLab") -> None:
    from scripts.lib.stealthlab import tool

    widen_ports(sl)
    proc = sl.srv.popen(apply_argv(sl, "30"), stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert "confirm within" in proc.stdout.readline()
    assert sl.ssh("alice", sl.srv.ip4).returncode == 0  # the admin checks they still get in, then confirms
    sl.srv.run([tool("stealth"), "server", "rules", "confirm", "--state-dir", str(sl.state_dir)])
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "22,2222" in our_rules(sl)
    missing = sl.srv.run([tool("stealth"), "server", "rules", "confirm", "--state-dir", str(sl.state_dir)],
                         check=False)
    assert missing.returncode == 1 and "no rule change is waiting" in missing.stderr
