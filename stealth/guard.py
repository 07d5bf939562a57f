# Why: the protection must not depend on nobody touching the host. Someone may flush the ruleset (an
# nftables reload does), restore an older one, or start the service on the protected port's public
# address again. The daemon runs these checks about once a second: it reinstalls missing rules and says
# so loudly, restarts a dead acceptor, and notices a public listener on a protected port (then a
# rejected SYN must be dropped, never passed on towards that socket).
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from stealth.errors import StealthError
from stealth.firewall import RuleConfig, install, missing_rules
from stealth.store import stamp

log = logging.getLogger("stealth.server")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}
_V6_LOOPBACK_HEX = "00000000000000000000000001000000"  # ::1 as /proc shows it (32-bit words, host order)
_V4_MAPPED_HEX = "0000000000000000FFFF0000"


def _is_loopback(addr: str) -> bool:
    """An address from /proc/net/tcp{,6}: IPv4 as one little-endian word, so 127/8 ends in "7F"."""
    if len(addr) == 8:
        return addr.endswith("7F")
    return addr == _V6_LOOPBACK_HEX or (addr.startswith(_V4_MAPPED_HEX) and addr.endswith("7F"))


def _readable(addr: str, port: int) -> str:
    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
    if len(raw) == 4:
        return f"{socket.inet_ntop(socket.AF_INET, raw)}:{port}"
    return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]:{port}"


def public_listeners(ports: Iterable[int], proc: Path = Path("/proc/net")) -> list[str]:
    """Listening TCP sockets on `ports` bound to anything but loopback, as "ADDR:PORT" (from
    /proc/net/tcp and tcp6; the kernel lists listeners first, so reading stops at the first other)."""
    wanted = {f"{p:04X}" for p in ports}
    found = []
    for name in ("tcp", "tcp6"):
        try:
            with open(proc / name) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) < 4 or fields[3] != _LISTEN:
                        break
                    addr, _, port = fields[1].partition(":")
                    if port in wanted and not _is_loopback(addr):
                        found.append(_readable(addr, int(port, 16)))
        except OSError:
            continue
    return found


class Guard:
    """The periodic checks of the parent process: rules in place, acceptor alive. Run inline by a
    supervisor, or (start_thread) beside a process that serves the queue: reading the ruleset takes
    milliseconds, which the packet loop must not wait for."""

    def __init__(self, rules: dict[int, RuleConfig], acceptor: Callable[[], "subprocess.Popen[bytes]"],
                 config_path: Path) -> None:
        self.rules = rules
        self._spawn = acceptor
        self._config_path = config_path
        self._config_stamp = stamp(config_path)
        self.acceptor = acceptor()
        self.repairs = 0
        self.last_problem: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start_thread(self, interval: float) -> None:
        """Run check() every `interval` seconds in a daemon thread until stop(); an exception in one round is
        logged and the rounds go on."""
        def loop() -> None:
            while not self._stopping.wait(interval):
                try:
                    self.check()
                except Exception as e:  # noqa: BLE001 -- the checks must go on
                    log.error("rule check failed: %s", e)

        self._thread = threading.Thread(target=loop, name="stealth-guard", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """One round: reinstall missing rules (logged as an error; a failed reinstall is logged, not raised),
        restart a dead acceptor, and restart it when server.toml changed. Called by start_thread's thread or
        by a supervisor, never both."""
        problems = [p for f, cfg in self.rules.items() if (p := missing_rules(cfg, f)) is not None]
        if problems:
            self.repairs += 1
            self.last_problem = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {problems[0]}"
            log.error("firewall rules were removed by someone else (%s); reinstalling them", problems[0])
            try:
                install(self.rules)
            except StealthError as e:
                log.error("cannot reinstall the firewall rules: %s", e)
        if self.acceptor.poll() is not None:
            log.error("acceptor exited (status %s); restarting it", self.acceptor.returncode)
            self.acceptor = self._spawn()
        now = stamp(self._config_path)
        if now != self._config_stamp:  # backends or sealed ports may have changed
            self._config_stamp = now
            log.info("%s changed: restarting the acceptor with its backends and sealed ports",
                     self._config_path)
            self._stop_acceptor()
            self.acceptor = self._spawn()

    def stop(self) -> None:
        """Stop the check thread, if any, and the acceptor; relays of open sessions go on."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        self._stop_acceptor()

    def _stop_acceptor(self) -> None:
        """Stop the acceptor (relays of open sessions go on; queued connections wait in the listener)."""
        if self.acceptor.poll() is None:
            self.acceptor.terminate()
        try:
            self.acceptor.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.acceptor.kill()
            self.acceptor.wait()

    def status(self) -> dict[str, object]:
        """The guard's fields for status.json: the acceptor's pid, the rule repairs so far, the last problem
        found."""
        return {"acceptor_pid": self.acceptor.pid, "rule_repairs": self.repairs,
                "last_rule_problem": self.last_problem}

