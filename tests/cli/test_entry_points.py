# Why: the other CLI tests run the commands in process; these few run the installed console scripts
# (`stealth`, `stealth-connect`) as a user's shell does, to prove the entry points start, and that an error
# still reaches the real process as a non-zero exit status with one line on stderr.
import subprocess
from pathlib import Path

from stealth.store import atomic_write
from tests.conftest import stealth_bin


def run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([stealth_bin(name), *args], capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, timeout=60)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_stealth_help() -> None:
    result = run("stealth", "--help")
    assert result.returncode == 0, result.stderr
    assert "client" in result.stdout and "server" in result.stdout and "inspect" in result.stdout


def test_stealth_bad_state_file_is_one_line_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    atomic_write(config, b"server_id = [")
    line = one_line(run("stealth", "server", "status", "--state-dir", str(tmp_path)))
    assert str(config) in line and "invalid TOML" in line, line


def test_stealth_connect_without_profile(tmp_path: Path) -> None:
    line = one_line(run("stealth-connect", "198.51.100.77", "22", "--state-dir", str(tmp_path)))
    assert "no stealth profile" in line, line
