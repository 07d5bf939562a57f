# Why: the agent's shipped systemd pair must stay hardened (an exposure score a test reads, not a claim
# in a README) and its socket-activated start must really serve: systemd-socket-activate passes the
# listening socket the way systemd does (LISTEN_FDS/LISTEN_PID, fd 3).
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from stealth_connect.agent_proto import GREETING_OK, STATUS_OK, encode_request

from tests.conftest import ROOT, stealth_bin

UNITS = ROOT / "client" / "stealth_connect" / "systemd"
MAX_EXPOSURE = 2.0


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is missing (scripts/bootstrap installs systemd)")
    return path


def test_agent_service_exposure_is_low() -> None:
    out = subprocess.run([_need("systemd-analyze"), "security", "--offline=true",
                          str(UNITS / "stealth-agent.service")], capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for stealth-agent\.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr
    print(f"stealth-agent.service exposure: {found.group(1)}")
    assert float(found.group(1)) <= MAX_EXPOSURE


def test_socket_unit_is_a_group_only_seqpacket_socket() -> None:
    text = (UNITS / "stealth-agent.socket").read_text()
    assert "ListenSequentialPacket=/run/stealth/agent.sock" in text
    assert "SocketMode=0660" in text and "SocketGroup=stealth" in text


def test_agent_units_command_writes_both(tmp_path: Path) -> None:
    result = subprocess.run([stealth_bin("stealth"), "client", "agent-units", str(tmp_path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for unit in ("stealth-agent.socket", "stealth-agent.service"):
        assert (tmp_path / unit).read_text() == (UNITS / unit).read_text()


@pytest.mark.privileged
def test_socket_activated_agent_serves(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    proc = subprocess.Popen(
        [_need("systemd-socket-activate"), "--seqpacket", "-l", str(path), stealth_bin("stealth"), "client",
         "agent", "--group", "root"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
            conn.settimeout(10)
            conn.connect(str(path))  # systemd-socket-activate starts the agent on this first connection
            assert conn.recv(1) == GREETING_OK
            conn.send(encode_request(socket.AF_INET, 0x01020304))
            status, fds, _, _ = socket.recv_fds(conn, 1, 1)
        assert status == bytes([STATUS_OK]) and len(fds) == 1
        with socket.socket(fileno=fds[0]) as made:
            assert (made.family, made.type) == (socket.AF_INET, socket.SOCK_STREAM)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=10)
    assert "stealth agent ready on the socket systemd passed" in output, output
