# Why: "stealth never changes how the host treats a port it does not protect". On a host that forwards
# (containers, a router), PREROUTING also sees traffic to port 22 of *other* hosts; before this test, a
# drop-mode server dropped a container's `ssh github.com`. Here the server namespace routes a client's
# connection to a third host's port 22 while stealth protects its own port 22 in drop mode.
import subprocess
import sys

import pytest

pytestmark = pytest.mark.privileged

ELSEWHERE = "203.0.113.7"  # the third host's address, reached through the server
LISTENER = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{ELSEWHERE}", 22)); s.listen(); print("listening", flush=True)
c, _ = s.accept(); c.sendall(b"forwarded-ok"); c.close()
"""
CONNECT = f"""
import socket
c = socket.create_connection(("{ELSEWHERE}", 22), timeout=5); print(c.recv(100).decode())
"""


def test_forwarded_traffic_to_a_protected_port_number_is_not_touched() -> None:
    from scripts.lib.stealthlab import stealth_lab, syns

    with stealth_lab(server_id="fwd", clients=(), start=False, init_args=("--unauth", "drop")) as sl:
        srv, cli, atk = sl.srv, sl.cli, sl.atk
        for knob in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                     "net.ipv4.conf.eth0.send_redirects=0"):
            srv.run(["sysctl", "-qw", knob])  # route every packet through the server, no shortcut
        atk.run(["ip", "addr", "add", f"{ELSEWHERE}/32", "dev", "eth0"])
        cli.run(["ip", "route", "add", f"{ELSEWHERE}/32", "via", srv.ip4])
        srv.run(["ip", "route", "add", f"{ELSEWHERE}/32", "via", atk.ip4])
        sl.start_server()
        listener = atk.popen([sys.executable, "-c", LISTENER])
        try:
            assert listener.stdout is not None and "listening" in listener.stdout.readline()
            with srv.capture(f"tcp port 22 and host {ELSEWHERE}") as cap:
                result = cli.run([sys.executable, "-c", CONNECT], check=False, timeout=30,
                                 stdin=subprocess.DEVNULL)
            assert result.returncode == 0 and result.stdout.strip() == "forwarded-ok", result.stderr
            assert syns(cap.packets(), ELSEWHERE, 22), "the connection did not go through the server"
        finally:
            listener.kill()
            listener.wait(timeout=10)
