# Why: the client as people use it: not root. The agent tests and the demo both need the same pieces:
# `stealth client agent` run by root in the client namespace, and a user (uid 65534, nobody, with no
# capabilities) with a HOME of its own, the client-only install on its PATH and, as `usermod -aG`
# would make it, the agent's group; plus a throwaway group and a directory other users can traverse
# (the lab's own is root's alone). Everything is removed afterwards.
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.lib.netlab import LabError

NOBODY = 65534  # uid and gid (nogroup) of a user who is nobody in particular
ANSWER = "agent-ok"


@dataclass
class Agent:
    """`stealth client agent`, as root in the client namespace, from the client-only install."""

    sl: Any
    venv: Path
    socket: Path
    group: str
    log: Path
    proc: "subprocess.Popen[str] | None" = None

    def start(self) -> None:
        with open(self.log, "a") as log:
            proc = self.sl.cli.popen([str(self.venv / "bin" / "stealth"), "client", "agent", "--socket",
                                      str(self.socket), "--group", self.group], stderr=log, cwd="/")
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "ready" not in line:
            proc.kill()
            proc.wait(timeout=10)
            raise LabError(f"the agent did not start: {line!r} {self.log.read_text()}")
        self.proc = proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class User:
    """uid 65534 in the client namespace, with its own HOME (profiles, counters, ssh key and config) and
    the client-only install on its PATH. `creds`: "member" (the agent's group as a supplementary group,
    as `usermod -aG` makes it), "primary" (as primary group) or "outsider" (neither)."""

    sl: Any
    venv: Path
    home: Path
    gid: int
    agent_socket: Path
    configs: dict[str, Path] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.home / ".config" / "stealth"

    def argv(self, argv: list[str], creds: str = "member") -> list[str]:
        groups = {"member": ["--regid", str(NOBODY), "--groups", str(self.gid)],
                  "primary": ["--regid", str(self.gid), "--clear-groups"],
                  "outsider": ["--regid", str(NOBODY), "--clear-groups"]}[creds]
        env = [f"HOME={self.home}", f"PATH={self.venv / 'bin'}:/usr/bin:/bin", "SHELL=/bin/sh",
               "LC_ALL=C.UTF-8", f"STEALTH_AGENT_SOCKET={self.agent_socket}"]
        return ["setpriv", "--reuid", str(NOBODY), *groups, "--", "env", "-i", *env, *argv]

    def run(self, argv: list[str], creds: str = "member",
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run as this user; a run that outlasts `timeout` is killed with its process group (ssh and its
        ProxyCommand share that group) and raises LabError."""
        proc = self.sl.cli.popen(self.argv(argv, creds), stdin=subprocess.DEVNULL, cwd=str(self.home))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            raise LabError(f"{' '.join(argv)} as uid {NOBODY} hung for {timeout} s: {err.strip()}") from None
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def stealth(self, *args: str) -> str:
        r = self.run(["stealth", *args])
        assert r.returncode == 0, (args, r.stderr)
        return r.stdout

    def import_profile(self, profile: Path, host: str) -> None:
        copy = self.home / f"{profile.stem}.toml"
        shutil.copy(profile, copy)
        own(copy, 0o600)
        self.stealth("client", "import", str(copy), "--host", host)

    def ssh_config(self, name: str, host: str, *args: str) -> Path:
        """`stealth client ssh-config HOST ...` as the user wrote it into a config file of its own, with
        what this lab needs besides (the key, no host key checks)."""
        block = self.stealth("client", "ssh-config", host, "--user", "root", *args)
        path = self.home / f"ssh_config-{name}"
        path.write_text(block + "\n\n" + "\n".join([
            "Host *", f"    IdentityFile {self.home / 'id_ed25519'}", "    IdentitiesOnly yes",
            "    BatchMode yes", "    StrictHostKeyChecking no", "    UserKnownHostsFile /dev/null",
            "    GlobalKnownHostsFile /dev/null", "    LogLevel ERROR", "    ConnectTimeout 15", "",
        ]))
        own(path, 0o600)
        self.configs[name] = path
        return path

    def ssh(self, config: str, host: str, creds: str = "member", timeout: float = 40,
            command: str = f"echo {ANSWER}") -> subprocess.CompletedProcess[str]:
        return self.run(["ssh", "-F", str(self.configs[config]), host, command], creds, timeout)

    def connect(self, *args: str, creds: str = "member") -> subprocess.CompletedProcess[str]:
        """stealth-connect by itself (as a ProxyCommand, stdin closed)."""
        return self.run(["stealth-connect", *args], creds)

    def counters(self) -> dict[str, bytes]:
        """Every counter file's bytes: what "nothing was spent" compares."""
        folder = self.state_dir / "counters"
        return {p.name: p.read_bytes() for p in sorted(folder.glob("*"))} if folder.is_dir() else {}

    def last_used(self, host: str) -> int:
        from stealth_connect.profiles import ClientStore, load_profile, read_counter

        store = ClientStore(self.state_dir)
        return read_counter(store.counter_path(load_profile(store.find(host)))).last_used


def own(path: Path, mode: int) -> None:
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)


@contextlib.contextmanager
def throwaway_group() -> Iterator[tuple[str, int]]:
    """A new group (name, gid), deleted afterwards."""
    name = f"stealth-t{secrets.token_hex(4)}"
    subprocess.run(["groupadd", name], check=True, capture_output=True)
    try:
        gid = int(subprocess.run(["getent", "group", name], check=True, capture_output=True,
                                 text=True).stdout.split(":")[2])
        yield name, gid
    finally:
        subprocess.run(["groupdel", name], check=False, capture_output=True)


@contextlib.contextmanager
def shared_dir(prefix: str) -> Iterator[Path]:
    """A directory other users can traverse, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_user(sl: Any, venv: Path, gid: int, top: Path, agent: Agent, name: str) -> User:
    """uid 65534 with a HOME of its own under `top` and the lab's ssh key."""
    home = top / name
    home.mkdir()
    own(home, 0o700)
    key = home / "id_ed25519"
    shutil.copy(sl.ssh_dir / "user_key", key)
    own(key, 0o600)
    return User(sl, venv, home, gid, agent.socket)
