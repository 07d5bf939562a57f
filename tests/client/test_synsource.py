# Why: stealth-connect hands the agent a knock's ISN before the SYN leaves, so it must talk only to the
# real agent: a socket someone planted at $STEALTH_AGENT_SOCKET (any user can listen on a path it owns)
# must learn nothing. The client checks the listener's credentials (SO_PEERCRED uid 0) before it sends.
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from stealth_connect.agent_proto import GREETING_OK
from stealth_connect.synsource import AgentLink

from stealth.errors import ClientError

pytestmark = pytest.mark.privileged


def test_a_socket_planted_by_a_non_root_user_is_never_told_an_isn() -> None:
    top = Path(tempfile.mkdtemp(prefix="stealth-planted-"))  # pytest's tmp_path is root's alone
    top.chmod(0o777)
    path = top / "planted.sock"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the planter: an ordinary user with a listener that greets like the agent
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
                listener.bind(str(path))
                listener.listen()
                os.write(write_end, b"ready")
                conn, _ = listener.accept()
                conn.send(GREETING_OK)
                conn.settimeout(3)
                heard = conn.recv(64)
                os.write(write_end, b"heard" if heard else b"none")
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 5) == b"ready"
        with pytest.raises(ClientError, match="not a stealth agent run by root"):
            AgentLink(str(path))
        time.sleep(0.1)
        assert os.read(read_end, 5) == b"none"  # it was told nothing, not even a request
    finally:
        os.waitpid(pid, 0)
        os.close(read_end)
        shutil.rmtree(top, ignore_errors=True)
