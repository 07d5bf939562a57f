# Why: a backend address decides whether the service can be reached without a knock; only loopback and
# Unix sockets are accepted, and what init writes is what the server reads back.
from pathlib import Path

import pytest

from stealth.backend import Backend, default_backend, parse_assignment, parse_backend
from stealth.server_config import ServerConfig
from stealth.server_state import ServerState


@pytest.mark.parametrize(
    ("text", "backend"),
    [
        ("127.0.0.1:22", Backend(host="127.0.0.1", port=22)),
        ("127.8.9.10:2022", Backend(host="127.8.9.10", port=2022)),
        ("[::1]:22", Backend(host="::1", port=22)),
        ("unix:/run/sshd.sock", Backend(path="/run/sshd.sock")),
    ],
)
def test_loopback_and_unix_backends_round_trip(text: str, backend: Backend) -> None:
    assert parse_backend(text) == backend
    assert str(backend) == text


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("0.0.0.0:22", "loopback"),  # every address: reachable from outside
        ("198.51.100.1:22", "loopback"),
        ("[2001:db8::1]:22", "loopback"),
        ("localhost:22", "literal loopback address"),
        ("127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:0", "HOST:PORT"),
        ("127.0.0.1:65536", "HOST:PORT"),
        ("unix:relative.sock", "absolute path"),
    ],
)
def test_backends_reachable_from_outside_or_malformed_are_refused(text: str, fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        parse_backend(text)


def test_assignment_and_default() -> None:
    assert parse_assignment("22=[::1]:2022") == (22, Backend(host="::1", port=2022))
    with pytest.raises(ValueError, match="PORT=BACKEND"):
        parse_assignment("ssh=127.0.0.1:22")
    assert default_backend(2222) == Backend(host="127.0.0.1", port=2222)


def test_server_toml_keeps_backends(tmp_path: Path) -> None:
    state = ServerState(tmp_path / "s")
    config = ServerConfig("id", (22, 443), backends=((443, Backend(path="/run/web.sock")),))
    state.init(config)
    loaded = state.load_config()
    assert loaded == config
    assert loaded.backend(22) == Backend(host="127.0.0.1", port=22)
    assert loaded.backend(443) == Backend(path="/run/web.sock")
