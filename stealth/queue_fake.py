# Why: the daemon's packet path without a kernel. FakeQueue is a PacketQueue (packet_queue.py) kept in
# memory: tests put raw packets in, drive the real worker loop over it, and read back every verdict in
# the order it was given. It keeps the real queue's rules that matter to the daemon: accepts at once,
# knocks held for one commit that covers all of them (at GROUP_COMMIT_MAX, after GROUP_COMMIT_SECONDS,
# or when the queue is drained), drops collected and given after the held knocks in one batch, and any
# exception a drop reported to on_error. tests/server/test_packet_queue.py pins its signatures to
# nfqueue.Queue's.
import collections
import time
from dataclasses import dataclass

from stealth.packet_queue import AfterCommit, Commit, ErrorHandler, Handler, commit_verdicts, flush_due


@dataclass(frozen=True)
class Given:
    """One verdict: "accept" (mark: 0 unmarked), "repeat" (a committed knock, with its mark) or "drop";
    `batch` is the number of the drop batch it went out in (0: not a drop)."""

    payload: bytes
    action: str
    mark: int = 0
    batch: int = 0


class FakeQueue:
    """An in-memory PacketQueue. put() queues packets; poll() handles them; `given` lists the verdicts."""

    def __init__(
        self, queue_num: int, handler: Handler, on_error: ErrorHandler, commit: Commit | None = None,
    ) -> None:
        self.queue_num = queue_num
        self._handler = handler
        self._on_error = on_error
        self._commit = commit or (lambda: [True] * len(self._held))
        self._queued: collections.deque[bytes] = collections.deque()
        self._held: list[tuple[bytes, int]] = []
        self._held_since = 0.0
        self._drops: list[bytes] = []
        self.given: list[Given] = []
        self.commits = 0
        self.batches = 0
        self.closed = False

    def put(self, *payloads: bytes) -> None:
        """Queue packets, as the kernel does for SYNs the rules send to this queue."""
        if self.closed:
            raise RuntimeError("the queue is closed")
        self._queued.extend(payloads)

    def poll(self, timeout: float) -> None:
        """Handle every queued packet (waiting up to `timeout` seconds when none is queued), then flush."""
        if not self._queued and timeout > 0:
            time.sleep(min(timeout, 0.01))
        while self._queued:
            self._callback(self._queued.popleft())
        self.flush()

    def _callback(self, payload: bytes) -> None:
        try:
            verdict = self._handler(payload)
        except BaseException as e:  # noqa: BLE001 -- as nfqueue: a packet never escapes
            verdict = None
            self._on_error(e)
        if verdict is None:
            self._drops.append(payload)
        elif isinstance(verdict, AfterCommit):
            if not self._held:
                self._held_since = time.monotonic()
            self._held.append((payload, verdict.mark))
        else:
            self.given.append(Given(payload, "accept", verdict))
        if flush_due(len(self._held), self._held_since, len(self._drops), time.monotonic()):
            self.flush()

    def flush(self) -> None:
        """Held knocks first (one commit for all of them), then the collected drops as one batch."""
        if self._held:
            self.commits += 1
            verdicts = commit_verdicts(self._commit, len(self._held), self._on_error)
            held, self._held = self._held, []
            for (payload, mark), ok in zip(held, verdicts, strict=True):
                self.given.append(Given(payload, "repeat", mark) if ok else Given(payload, "drop"))
        if self._drops:
            self.batches += 1
            drops, self._drops = self._drops, []
            self.given += [Given(p, "drop", batch=self.batches) for p in drops]

    def close(self) -> None:
        """flush(), then release the queue: packets never read are dropped (as the kernel drops what
        waits in a queue that is unbound), and put() refuses more."""
        self.flush()
        self.given += [Given(p, "drop") for p in self._queued]
        self._queued.clear()
        self.closed = True
