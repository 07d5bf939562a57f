# Why: `pip install /path/to/stealth` is what a user types on a laptop: it must give a working client with
# no compiler and none of the server's dependencies, and a knock must not drag the server in. Checked on a
# real install (a copy of the checkout into a fresh venv of the system python, CC=/bin/false), and with a
# real ssh login in the lab whose ProxyCommand is that venv's stealth-connect, which then lists every
# module it loaded.
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# what a knock must never load: the server's packet path, its state, and the admin CLI's dependencies
SERVER_MODULES = ("stealth.server", "stealth.worker", "stealth.executor", "stealth.loader",
                  "stealth.packet_queue", "stealth.nfqueue", "stealth.firewall", "stealth.core.table",
                  "stealth.core.slots", "stealth.server_state", "stealth.server_config", "stealth.enrollment",
                  "stealth.clients_file", "netfilterqueue", "scapy", "nacl", "tomli_w", "click")
ANSWER = "client-only-ok"

# run by the venv's python as ssh's ProxyCommand: stealth-connect's own main(), listing the modules it has
# loaded once the knock is done, when it hands the socket over (ssh may kill a relay at logout)
MODULE_LISTER = """
import sys
import stealth_connect
import stealth_connect.relay as relay_module

def dump():
    with open(sys.argv[1], "w") as f:
        f.write("\\n".join([stealth_connect.__file__, *sorted(sys.modules)]) + "\\n")

def listing(real):
    def wrapper(*args, **kwargs):
        dump()
        return real(*args, **kwargs)
    return wrapper

relay_module.relay = listing(relay_module.relay)
relay_module.pass_fd = listing(relay_module.pass_fd)
from stealth_connect.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def venv() -> Path:
    from tests.conftest import client_venv_or_skip

    return client_venv_or_skip()


def run(venv: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    return subprocess.run([str(venv / "bin" / argv[0]), *argv[1:]], capture_output=True, text=True,
                          check=False, timeout=60, env=env, cwd="/")


def test_install_is_the_client_only(venv: Path) -> None:
    listed = run(venv, "python", "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check")
    names = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.split()}
    assert {"stealth", "click", "tomli-w"} <= names, names
    assert not names & {"netfilterqueue", "scapy", "pynacl"}, names
    for module in ("netfilterqueue", "scapy"):
        r = run(venv, "python", "-c", f"import {module}")
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, (module, r.stderr)
    # the installed package is the venv's, not the checkout's
    r = run(venv, "python", "-c", "import stealth_connect; print(stealth_connect.__file__)")
    assert r.returncode == 0 and r.stdout.startswith(str(venv)), r


def test_stealth_connect_version_and_help(venv: Path) -> None:
    from stealth import __version__

    r = run(venv, "stealth-connect", "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"stealth-connect {__version__}", r
    r = run(venv, "stealth-connect", "-h")
    assert r.returncode == 0, r.stderr
    assert "%h %p" in r.stdout and "%%" not in r.stdout, r.stdout
    assert "--fdpass" in r.stdout and "--name" in r.stdout


def test_stealth_client_commands_work(venv: Path) -> None:
    r = run(venv, "stealth", "client", "--help")
    assert r.returncode == 0, r.stderr
    for command in ("agent", "import", "list", "remove", "ssh-config"):
        assert f"  {command} " in r.stdout, (command, r.stdout)
    r = run(venv, "stealth", "--help")
    assert r.returncode == 0 and "server" in r.stdout, r


def test_stealth_server_says_what_to_install(venv: Path) -> None:
    for argv in (("server", "status"), ("server", "run"), ("inspect", "x.pcap")):
        r = run(venv, "stealth", *argv)
        assert r.returncode != 0, (argv, r)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (argv, r.stderr)
        assert "pip install 'stealth[server]'" in lines[0] and "Traceback" not in r.stderr, (argv, r.stderr)
        assert r.stdout == "", (argv, r.stdout)


# --- a knock with that install, in the lab -------------------------------------------------------------


@pytest.fixture(scope="module")
def sl(venv: Path) -> Iterator[Any]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="clientonly", clients=("alice",)) as lab:
        yield lab


def login_listing_modules(sl: Any, venv: Path, fdpass: bool, timeout: float = 30
                          ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """ssh through the client-only venv's stealth-connect (as root: it repairs the socket itself);
    the result and the modules its process had loaded when it finished."""
    import signal

    lister = sl.lab.tmp / "list_modules.py"
    lister.write_text(MODULE_LISTER)
    out = sl.lab.tmp / f"modules-{'fdpass' if fdpass else 'relay'}.txt"
    out.unlink(missing_ok=True)
    proxy = [str(venv / "bin" / "python"), str(lister), str(out), "--state-dir",
             str(sl.client_dirs["alice"])]
    extra = ["-o", "ProxyCommand=" + shlex.join(proxy + (["--fdpass"] if fdpass else [])) + " %h %p"]
    if fdpass:
        extra += ["-o", "ProxyUseFdpass=yes"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    argv = sl.ssh_argv("alice", sl.srv.ip4, command=f"echo {ANSWER}", knock=False, extra=extra)
    proc = sl.cli.popen(argv, stdin=subprocess.DEVNULL, env=env, cwd="/")
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
        pytest.fail(f"ssh through the client-only stealth-connect ({'fdpass' if fdpass else 'relay'}) hung "
                    f"for {timeout} s: {stderr.strip()}")
    result = subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
    return result, out.read_text().split() if out.exists() else []


def last_used(sl: Any) -> int:
    from stealth_connect.profiles import ClientStore, load_profile, read_counter

    store = ClientStore(sl.client_dirs["alice"])
    return read_counter(store.counter_path(load_profile(store.find(sl.srv.ip4)))).last_used


@pytest.mark.privileged
@pytest.mark.parametrize("fdpass", [True, False], ids=["fdpass", "relay"])
def test_a_knock_loads_no_server_module(sl: Any, venv: Path, fdpass: bool) -> None:
    before = last_used(sl)
    result, modules = login_listing_modules(sl, venv, fdpass)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ANSWER
    assert last_used(sl) == before + 1  # it really knocked
    assert modules, "the ProxyCommand wrote no module list"
    origin, loaded = modules[0], set(modules[1:])
    assert origin.startswith(str(venv)), origin  # the install's code, not the checkout's
    assert "stealth_connect.connect" in loaded and "stealth_connect.syn" in loaded
    offending = sorted(m for m in loaded if any(m == s or m.startswith(s + ".") for s in SERVER_MODULES))
    assert offending == [], offending

