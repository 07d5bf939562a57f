# Why: the only import of netfilterqueue. It binds a queue with a socket buffer big enough for the
# queue (or the library silently loses packets), hands each payload to a callback that returns a
# verdict, and turns any exception into a DROP: nothing a packet does may escape run().
# Group commit: an accept that needs durable state first (a knock) is held back; when the queue is
# drained, or GROUP_COMMIT_MAX knocks or GROUP_COMMIT_SECONDS have piled up, one commit() (one fsync)
# covers them all, and only then do they get their accept verdicts (or drops, if the commit failed).
# Batched drops: the library sends one verdict message (one syscall) per packet, which under a junk
# flood is a large share of the work. Drops are therefore collected and given with one
# NFQNL_MSG_VERDICT_BATCH, built here and sent on the library's own netlink socket. The kernel applies
# such a verdict to *every* packet still waiting with an id up to the given one, so a batch is only
# sent when nothing is held: flush() gives the held knocks their verdicts first, then drops the rest in
# one message. Accepts that need no commit are given at once, so they are never left waiting. If the
# batch cannot be sent, each collected packet is dropped on its own: a failure never accepts anything.
import select
import socket
import struct
import time
import warnings
from typing import Any, Final

from stealth.constants import (
    NFQUEUE_COPY_BYTES,
    NFQUEUE_MAX_LEN,
    NFQUEUE_SOCKET_BYTES_PER_PACKET,
)
from stealth.errors import StealthError
from stealth.packet_queue import AfterCommit, Commit, ErrorHandler, Handler, commit_verdicts, flush_due

# Batched drop verdicts on (True) or one verdict message per dropped packet (False). A module switch,
# not a setting: the benchmarks flip it to measure what batching gains.
BATCH_DROPS = True

# linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_queue.h, linux/netfilter.h
_NLM_F_REQUEST: Final = 0x1
_NFNL_SUBSYS_QUEUE: Final = 3
_NFQNL_MSG_VERDICT_BATCH: Final = 3
_NFQA_VERDICT_HDR: Final = 2
_NF_DROP: Final = 0
_NFNETLINK_V0: Final = 0


def verdict_batch_message(queue_num: int, max_id: int, verdict: int = _NF_DROP) -> bytes:
    """One NFQNL_MSG_VERDICT_BATCH: nlmsghdr (host order), nfgenmsg (AF_UNSPEC, v0, queue number in
    network order), and the NFQA_VERDICT_HDR attribute (verdict, packet id; network order)."""
    attr = struct.pack("=HH", 4 + 8, _NFQA_VERDICT_HDR) + struct.pack("!II", verdict, max_id)
    body = struct.pack("!BBH", socket.AF_UNSPEC, _NFNETLINK_V0, queue_num) + attr
    header = struct.pack("=IHHII", 16 + len(body), _NFNL_SUBSYS_QUEUE << 8 | _NFQNL_MSG_VERDICT_BATCH,
                         _NLM_F_REQUEST, 0, 0)
    return header + body


class Queue:
    """One bound NFQUEUE: a PacketQueue (stealth/packet_queue.py states the contract of handler,
    commit and verdict order). Raises StealthError when the queue cannot be bound. Drive it from one
    thread with poll()."""

    def __init__(
        self, queue_num: int, handler: Handler, on_error: ErrorHandler, commit: Commit | None = None,
    ) -> None:
        from netfilterqueue import NetfilterQueue

        self._queue_num = queue_num
        self._handler = handler
        self._on_error = on_error
        self._commit = commit or (lambda: [True] * len(self._held))
        self._held: list[tuple[Any, int]] = []
        self._held_since = 0.0
        self._batch = BATCH_DROPS
        self._drops: list[Any] = []  # dropped packets whose verdict is not sent yet, in id order
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
        # for select() and the batch verdicts; the library reads it
        self._sock = socket.socket(fileno=self._nfq.get_fd())

    def _callback(self, pkt: Any) -> None:
        try:
            verdict = self._handler(pkt.get_payload())
        except BaseException as e:  # noqa: BLE001 -- a packet must never stop the server
            verdict = None
            self._on_error(e)
        try:
            if verdict is None:
                if self._batch:
                    self._drops.append(pkt)
                else:
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
        if flush_due(len(self._held), self._held_since, len(self._drops), time.monotonic()):
            self.flush()

    def flush(self) -> None:
        """Give every packet still waiting its verdict: the held ones first, then the collected drops
        (as one batch, which may then cover no held packet)."""
        self._flush_held()
        self._flush_drops()

    def _flush_held(self) -> None:
        """Commit once, then give every held packet its verdict: commit() returns one bool per held
        packet, in order (accept if True, else drop)."""
        if not self._held:
            return
        verdicts = commit_verdicts(self._commit, len(self._held), self._on_error)
        held, self._held = self._held, []
        for (pkt, mark), ok in zip(held, verdicts, strict=True):
            try:
                if ok:  # repeat: the mangle chain runs again, and its mark rules send it to TPROXY
                    pkt.set_mark(mark)
                    pkt.repeat()
                else:
                    pkt.drop()
            except BaseException as e:  # noqa: BLE001
                self._on_error(e)

    def _flush_drops(self) -> None:
        """Drop every collected packet with one batch verdict up to the newest one's id. Every packet
        with a lower id has had its own verdict already (accepts at once, held ones in _flush_held), so
        the batch covers exactly the collected drops. Falls back to one drop per packet."""
        if not self._drops:
            return
        drops, self._drops = self._drops, []
        if not self._held:  # always true after _flush_held; never let a batch reach a held packet
            try:
                self._sock.send(verdict_batch_message(self._queue_num, drops[-1].id))
                return
            except BaseException as e:  # noqa: BLE001
                self._on_error(e)
        for pkt in drops:
            try:
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
        """Give every waiting packet its verdict (flush()), then unbind the queue."""
        self.flush()
        self._nfq.unbind()
        self._sock.detach()
