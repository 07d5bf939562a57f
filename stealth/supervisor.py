# Why: with --workers N the daemon forks N queue workers (NFQUEUE --queue-balance spreads SYNs over their
# queues) and stays as their supervisor: it restarts a worker that dies (after reloading what the others
# made durable, so the new one never accepts a spent counter), passes SIGHUP on, keeps checking the
# rules and the acceptor, and publishes the workers' summed counts. A forked worker never returns into
# the parent's code: whatever happens, it leaves with os._exit.
import collections
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING

from stealth.constants import RULE_CHECK_SECONDS, STATUS_INTERVAL_SECONDS, SUPERVISOR_TICK_SECONDS
from stealth.errors import StealthError
from stealth.store import locked

if TYPE_CHECKING:
    from stealth.server import Server

log = logging.getLogger("stealth.server")


class Supervisor:
    """The parent of the queue workers of `server` (a Server whose queue_factory binds real queues)."""

    def __init__(self, server: "Server", families: list[int]) -> None:
        self.server = server
        self.families = families
        self.children: dict[int, int] = {}  # pid -> worker index

    def start(self) -> None:
        """Fork one worker per queue; each binds its queue and reports over a pipe. StealthError (and
        every started worker stopped) when one cannot bind."""
        for index in range(self.server.workers):
            pid, report = self._fork(index)
            self.children[pid] = index
            if report != b"ok":
                self.stop()
                raise StealthError(report.decode(errors="replace") or f"worker {index} died while starting")

    def _fork(self, index: int) -> tuple[int, bytes]:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code (and its rule cleanup)
            code = 1
            try:
                os.close(rfd)
                code = self.server.serve_as_worker(index, wfd, self.families)
            except BaseException as e:  # noqa: BLE001
                log.error("worker %d failed: %s", index, e)
            finally:
                os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            return pid, r.read()

    def supervise(self) -> None:
        """Until the server's `stop`: restart dead workers, pass reloads on, check the rules, publish."""
        server = self.server
        next_status = next_watch = 0.0
        while not server.stop:
            time.sleep(SUPERVISOR_TICK_SECONDS)
            if time.monotonic() >= next_watch:
                server.watch()
                if server.guard is not None:
                    server.guard.check()  # missing rules reinstalled, a dead acceptor restarted
                next_watch = time.monotonic() + RULE_CHECK_SECONDS
            for pid, index in list(self.children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    log.error("worker %d exited (status %d); restarting it", index, status)
                    del self.children[pid]
                    self._restart(index)
            if server.sync.reload_requested:
                server.sync.reload_requested = False
                for pid in self.children:
                    os.kill(pid, signal.SIGHUP)
            if time.monotonic() >= next_status:
                self._publish()
                next_status = time.monotonic() + STATUS_INTERVAL_SECONDS

    def _restart(self, index: int) -> None:
        with locked(self.server.state.counters_lock):  # what the other workers made durable so far
            self.server.load(self.server.journal.read())
        pid, report = self._fork(index)
        if report != b"ok":
            log.error("worker %d could not restart: %s", index, report.decode(errors="replace"))
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            return
        self.children[pid] = index

    def _publish(self) -> None:
        """status.json with the workers' counts summed."""
        counts: collections.Counter[str] = collections.Counter()
        for index in range(self.server.workers):
            try:
                doc = self.server.state.read_status(index)
            except StealthError:
                continue
            counts.update((doc or {}).get("counts", {}))
        self.server.counts.clear()
        self.server.counts.update(counts)
        self.server.publish(self.families)

    def stop(self) -> None:
        """SIGTERM every worker and wait for it."""
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in self.children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()
