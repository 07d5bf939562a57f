# Why: shared fixtures. Privileged tests (root, netns, iptables, NFQUEUE, sshd) skip outside CI with the
# reason printed; in CI (CI=true) a missing privilege or tool fails them, never skips them.
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts" / "lib"))
VENV_BIN = Path(sys.executable).parent
PRIVILEGED_TOOLS = ["ip", "iptables", "ip6tables", "iptables-legacy", "tcpdump", "nmap", "hping3",
                    "/usr/sbin/sshd", "ssh", "nc", "nft", "ufw", "curl", "unshare", "fail2ban-regex"]


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
    from netlab import LabError
    from stealthlab import client_venv

    try:
        return client_venv()
    except LabError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"client-only install failed: {e}")
        pytest.skip(f"client-only install failed (no package index?): {e}")
