# Why: shared fixtures. Privileged tests (root, netns, iptables, NFQUEUE, sshd) skip outside CI with the
# reason printed; in CI (CI=true) a missing privilege or tool fails them, never skips them. How many
# examples each hypothesis test tries comes from one profile, STEALTH_HYPOTHESIS=fast (the default) or
# deep (ten times as many), not from the tests.
import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pytest
from hypothesis import settings

if TYPE_CHECKING:
    from scripts.lib.stealthlab import StealthLab

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PRIVILEGED_TOOLS = ["ip", "iptables", "ip6tables", "iptables-legacy", "tcpdump", "nmap", "hping3",
                    "/usr/sbin/sshd", "ssh", "nc", "nft", "ufw", "curl", "unshare", "fail2ban-regex"]

HYPOTHESIS_EXAMPLES = {"fast": 50, "deep": 500}
for _name, _examples in HYPOTHESIS_EXAMPLES.items():
    settings.register_profile(_name, max_examples=_examples, deadline=None)
settings.load_profile(os.environ.get("STEALTH_HYPOTHESIS", "fast"))


def scaled(examples: int) -> int:
    """max_examples for a test that deliberately tries more than the profile's count: `examples` under
    the fast profile, as many times more under a deeper one."""
    return examples * settings().max_examples // HYPOTHESIS_EXAMPLES["fast"]


@functools.cache
def privileged_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, NFQUEUE)"
    missing = [t for t in PRIVILEGED_TOOLS if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        return f"missing tools: {', '.join(missing)} (run scripts/bootstrap)"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "cannot use network namespaces here"
    return None


def require_privileges() -> None:
    """Skip (outside CI) or fail (in CI) unless privileged tests can run here. Module-scoped lab
    fixtures call it first: they are set up before any function-scoped gate could act."""
    problem = privileged_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"privileged test cannot run in CI: {problem}")
    pytest.skip(problem)


@pytest.fixture(autouse=True)
def _privileged_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("privileged") is not None:
        require_privileges()


def stealth_bin(name: str) -> str:
    """Path of a console script installed in the running virtualenv (stealth, stealth-connect)."""
    return str(VENV_BIN / name)


def client_venv_or_skip() -> Path:
    """The client-only install of this checkout (stealthlab.client_venv, built once per run); a failed
    build skips outside CI (no package index here) and fails in CI."""
    from scripts.lib.netlab import LabError
    from scripts.lib.stealthlab import client_venv

    try:
        return client_venv()
    except LabError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"client-only install failed: {e}")
        pytest.skip(f"client-only install failed (no package index?): {e}")


def lab_fixture(server_id: str, clients: Sequence[str] = ("alice",), *, init_args: Sequence[str] = (),
                start: bool = True, scope: Literal["module", "function"] = "module",
                name: str = "sl") -> object:
    """The lab fixture of a privileged test module, `sl = lab_fixture(...)` (or `lab = ...(name="lab")`): a
    StealthLab (scripts/lib/stealthlab.py) with `clients` enrolled and its server started unless
    start=False, built once per module (or per test) after the privilege check, and torn down after."""

    def sl() -> Iterator["StealthLab"]:
        require_privileges()
        from scripts.lib.stealthlab import stealth_lab

        with stealth_lab(server_id=server_id, clients=clients, start=start, init_args=init_args) as lab:
            yield lab

    return pytest.fixture(sl, scope=scope, name=name)
