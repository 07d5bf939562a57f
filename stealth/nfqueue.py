# Why: the only import of netfilterqueue. It binds a queue with a socket buffer big enough for the
# queue (or the library silently loses packets), hands each payload to a callback that returns a
# verdict, and turns any exception into a DROP: nothing a packet does may escape run().
# Group commit: an accept that needs durable state first (a knock) is held back; when the queue is
# drained, or GROUP_COMMIT_MAX knocks or GROUP_COMMIT_SECONDS have piled up, one commit() (one fsync)
# covers them all, and only then do they get their accept verdicts (or drops, if the commit failed).
import select
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stealth.constants import (
    GROUP_COMMIT_MAX,
    GROUP_COMMIT_SECONDS,
    NFQUEUE_COPY_BYTES,
    NFQUEUE_MAX_LEN,
    NFQUEUE_SOCKET_BYTES_PER_PACKET,
)
from stealth.errors import StealthError


@dataclass(frozen=True)
class AfterCommit:
    """Accept with `mark`, but only once commit() has made the state behind it durable."""

    mark: int


# payload -> mark to accept with (0: accept unmarked), AfterCommit(mark), or None: drop
Handler = Callable[[bytes], "int | AfterCommit | None"]


class Queue:
    def __init__(
        self, queue_num: int, handler: Handler, on_error: Callable[[BaseException], None],
        commit: Callable[[], list[bool]] | None = None,
    ) -> None:
        from netfilterqueue import NetfilterQueue

        self._handler = handler
        self._on_error = on_error
        self._commit = commit or (lambda: [True] * len(self._held))
        self._held: list[tuple[Any, int]] = []
        self._held_since = 0.0
        self._nfq: Any = NetfilterQueue()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                self._nfq.bind(
                    queue_num, self._callback, max_len=NFQUEUE_MAX_LEN, range=NFQUEUE_COPY_BYTES,
                    sock_len=NFQUEUE_MAX_LEN * NFQUEUE_SOCKET_BYTES_PER_PACKET,
                )
        except RuntimeWarning as e:
            raise StealthError(f"NFQUEUE {queue_num}: socket buffer too small: {e}") from None
        except OSError:
            raise StealthError(
                f"cannot bind NFQUEUE {queue_num}: it is in use by another process, or this process "
                "lacks CAP_NET_ADMIN"
            ) from None
        self._sock = socket.socket(fileno=self._nfq.get_fd())  # for select(); the library reads it

    def _callback(self, pkt: Any) -> None:
        try:
            verdict = self._handler(pkt.get_payload())
        except BaseException as e:  # noqa: BLE001 -- a packet must never stop the server
            verdict = None
            self._on_error(e)
        try:
            if verdict is None:
                pkt.drop()
            elif isinstance(verdict, AfterCommit):
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.append((pkt, verdict.mark))
            else:
                if verdict:
                    pkt.set_mark(verdict)
                pkt.accept()
        except BaseException as e:  # noqa: BLE001
            self._on_error(e)
        if self._held and (
            len(self._held) >= GROUP_COMMIT_MAX or time.monotonic() - self._held_since >= GROUP_COMMIT_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        """Commit once, then give every held packet its verdict: commit() returns one bool per held
        packet, in order (accept if True, else drop)."""
        if not self._held:
            return
        try:
            verdicts = self._commit()
        except BaseException as e:  # noqa: BLE001
            verdicts = []
            self._on_error(e)
        held, self._held = self._held, []
        if len(verdicts) != len(held):
            verdicts = [False] * len(held)
        for (pkt, mark), ok in zip(held, verdicts, strict=True):
            try:
                if ok:
                    pkt.set_mark(mark)
                    pkt.accept()
                else:
                    pkt.drop()
            except BaseException as e:  # noqa: BLE001
                self._on_error(e)

    def poll(self, timeout: float) -> None:
        """Handle every queued packet, waiting up to `timeout` seconds for the first one."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if ready:
            self._nfq.run(block=False)
        self.flush()

    def close(self) -> None:
        self.flush()
        self._nfq.unbind()
        self._sock.detach()
