# Why: on a standard install an administrator types no flags, and `stealth server status --json` is what
# monitoring reads. One lab runs the real default layout: a private mount namespace (unshare -m) whose
# /etc and /var/lib are overlays, so /etc/stealth and /var/lib/stealth are the real paths there and the
# host's stay untouched. Every server command runs in it without --state-dir (init, add-client with
# `--profile-out -` and the server's ports, run, rules apply/confirm/remove, add-clients, resync, revoke,
# status, inspect), and after a real knock through the kernel, `status --json` parses, says what the text
# says, and shows the protected families, the unauth mode in effect and alice's last accepted knock (its
# time and the client's address).
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.privileged

OVERLAYS = ("/etc", "/var/lib")


def host_layout() -> tuple[bool, bool]:
    return Path("/etc/stealth").exists(), Path("/var/lib/stealth").exists()


class Standard:
    """The lab, plus a process holding the private mount namespace that commands enter with nsenter."""

    def __init__(self, sl: Any) -> None:
        self.sl = sl
        mounts = []
        for i, top in enumerate(OVERLAYS):
            upper, work = sl.lab.tmp / f"upper{i}", sl.lab.tmp / f"work{i}"
            upper.mkdir()
            work.mkdir()
            mounts.append(f"mount -t overlay overlay -o lowerdir={top},upperdir={upper},workdir={work} {top}")
        self.holder = sl.srv.popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                                    " && ".join([*mounts, "echo mounted", "exec sleep 600"])])
        assert self.holder.stdout is not None
        line = self.holder.stdout.readline()
        assert line.strip() == "mounted", self.holder.communicate(timeout=5)

    def argv(self, *args: str) -> list[str]:
        from scripts.lib.stealthlab import tool

        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", tool("stealth"), *args]

    def stealth(self, *args: str, stdin: str | None = None) -> str:
        result = self.sl.srv.run(self.argv(*args), check=False, input=stdin, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
        out: str = result.stdout
        return out

    def shell(self, script: str) -> str:
        out: str = self.sl.srv.run(["nsenter", "-t", str(self.holder.pid), "-m", "--", "sh", "-c", script],
                                   timeout=30).stdout
        return out

    def start_server(self) -> None:
        sl = self.sl
        sl.server_log_path = sl.lab.tmp / "server.log"
        with open(sl.server_log_path, "w") as log:
            proc = sl.srv.popen(self.argv("server", "run"), stderr=log)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "ready" in line, sl.server_log_path.read_text()
        sl.server_proc = proc


@pytest.fixture(scope="module")
def std() -> Iterator[Standard]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    before = host_layout()
    with stealth_lab(server_id="unused", clients=(), start=False) as sl:
        s = Standard(sl)
        s.stealth("server", "init", "--server-id", "standard", "--ports", "22")
        profile = sl.lab.tmp / "alice.toml"
        profile.touch(mode=0o600)  # as `umask 077; ... > alice.toml` would: it holds alice's key
        profile.write_text(s.stealth("server", "add-client", "alice", "--profile-out", "-"))
        cdir = sl.lab.tmp / "client-alice"
        sl.stealth("client", "import", str(profile), "--host", sl.srv.ip4, "--state-dir", str(cdir))
        sl.client_dirs["alice"] = cdir
        s.start_server()
        yield s
    assert host_layout() == before, "the test touched the host's /etc/stealth or /var/lib/stealth"


def knock(sl: Any) -> None:
    from scripts.lib.stealthlab import tool

    argv = [tool("stealth-connect"), "--state-dir", str(sl.client_dirs["alice"]), "--timeout", "5",
            sl.srv.ip4, "22"]
    result = sl.cli.run(argv, check=False, stdin=subprocess.DEVNULL, timeout=60)
    assert result.returncode == 0, result.stderr


def status(std: Standard) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(std.stealth("server", "status", "--json"))
    return doc


def test_status_json_matches_the_text_after_a_real_knock(std: Standard) -> None:
    from scripts.lib.netlab import wait_for
    from stealth.status import render, utc

    t0 = int(time.time())
    knock(std.sl)
    wait_for(lambda: status(std)["clients"][0]["last_accept"] is not None, timeout=5,
             what="the accept in status")
    doc = status(std)
    text = std.stealth("server", "status").splitlines()
    assert render(doc) == text  # every line of the text comes from the JSON's fields
    assert (doc["config_file"], doc["state_dir"]) == ("/etc/stealth/server.toml", "/var/lib/stealth")
    daemon = doc["server"]
    assert daemon["state"] == "running" and daemon["families"] == ["ipv4", "ipv6"]
    assert daemon["unauth_modes"] == {"ipv4": "reset", "ipv6": "reset"}  # auto, on plain Linux
    (alice,) = doc["clients"]
    last = alice["last_accept"]
    assert alice["name"] == "alice" and alice["ports"] == [22] and alice["last_counter"] == 1
    assert last["source"] == std.sl.cli.ip4
    assert t0 <= last["unix_time"] <= time.time() and last["time"] == utc(last["unix_time"])
    assert f"  alice: ports 22 last counter 1; last accepted {last['time']} from {std.sl.cli.ip4}" in text
    assert f"server: running (pid {daemon['pid']})" in text
    assert "  protected: ipv4 (unauth reset), ipv6 (unauth reset)" in text
    assert f"  valid: {daemon['counts']['valid']}" in text and daemon["counts"]["valid"] == 1


def test_every_command_works_without_flags_on_the_standard_layout(std: Standard) -> None:
    sl = std.sl
    apply = sl.srv.popen(std.argv("server", "rules", "apply", "--confirm-within", "30"))
    assert apply.stdout is not None
    assert "new rules installed" in apply.stdout.readline()
    assert std.stealth("server", "rules", "confirm").strip() == "confirmed"
    out, err = apply.communicate(timeout=30)
    assert apply.returncode == 0 and "the new rules stay" in out, err
    std.stealth("server", "add-clients", "--names-from", "-", "--profiles-dir", str(sl.lab.tmp / "more"),
                stdin="bob\n")
    std.stealth("server", "resync", "alice", "--counter", "40")
    std.stealth("server", "revoke", "bob")
    assert [(c["name"], c["last_counter"]) for c in status(std)["clients"]] == [("alice", 40)]
    empty = sl.lab.tmp / "empty.pcap"
    empty.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    assert std.stealth("inspect", str(empty)) == ""
    assert std.shell("ls /etc/stealth").split() == ["server.toml"]
    files = std.shell("ls /var/lib/stealth").split()
    assert {"clients.jsonl", "status.json", "accepts.log"} <= set(files) and "server.toml" not in files
    sl.stop_server()
    assert status(std)["server"]["state"] == "stopped"
    removed = std.stealth("server", "rules", "remove")
    assert "removed chain STEALTH-50" in removed
    assert "STEALTH" not in sl.srv.run(["iptables-save"]).stdout
