# Why: the daemon's one seam to the kernel's packet queue. The worker (worker.py) is written against
# PacketQueue, not against NetfilterQueue, so its loop, group commit and verdict order run in the
# unprivileged tests on an in-memory queue (queue_fake.py) that is pinned to this same contract
# (tests/server/test_packet_queue.py checks both implementations' signatures against it).
#
# The contract, for any implementation:
#   - handler(payload) returns the verdict of one packet: None drops it, an int accepts it at once with
#     that mark (0: unmarked), AfterCommit(mark) holds it until commit() has made its state durable.
#   - commit() is called once for all packets held at that moment and returns one bool per held packet,
#     in order: True accepts it with its mark (as a repeat, so the mangle chain sees the mark), False
#     drops it. A commit that raises, or returns the wrong number of bools, drops every held packet.
#   - Held packets get their verdicts before any collected drop is sent: a batched drop verdict covers
#     every packet with a lower id, and must never cover a held one.
#   - Any exception in handler, commit or a verdict goes to on_error and is a drop: nothing a packet
#     does escapes poll().
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from stealth.constants import DROP_BATCH_MAX, GROUP_COMMIT_MAX, GROUP_COMMIT_SECONDS


@dataclass(frozen=True)
class AfterCommit:
    """Accept with `mark` (verdict NF_REPEAT, so the table's rules see the mark), but only once
    commit() has made the state behind it durable."""

    mark: int


Verdict = int | AfterCommit | None
Handler = Callable[[bytes], Verdict]  # payload -> its verdict (see the contract above)
ErrorHandler = Callable[[BaseException], None]
Commit = Callable[[], list[bool]]


class PacketQueue(Protocol):
    """One bound queue, driven from one thread."""

    def poll(self, timeout: float) -> None:
        """Handle every queued packet, waiting up to `timeout` seconds for the first one; then give every
        packet its verdict (flush)."""

    def flush(self) -> None:
        """Give every packet still waiting its verdict: the held ones first (one commit), then the
        collected drops."""

    def close(self) -> None:
        """flush(), then release the queue."""


QueueFactory = Callable[[int, Handler, ErrorHandler, Commit], PacketQueue]


def flush_due(held: int, held_since: float, drops: int, now: float) -> bool:
    """Whether a queue must flush before reading on: GROUP_COMMIT_MAX knocks held, or the oldest held
    GROUP_COMMIT_SECONDS ago, or DROP_BATCH_MAX drops collected (they count against the queue's length
    until their verdict)."""
    return bool(held and (held >= GROUP_COMMIT_MAX or now - held_since >= GROUP_COMMIT_SECONDS)) \
        or drops >= DROP_BATCH_MAX


def commit_verdicts(commit: Commit, held: int, on_error: ErrorHandler) -> list[bool]:
    """One commit for `held` held packets, as the contract says: its bools, or all False when it raises
    (reported to on_error) or returns the wrong number of them."""
    try:
        verdicts = commit()
    except BaseException as e:  # noqa: BLE001 -- a packet must never stop the server
        on_error(e)
        return [False] * held
    return verdicts if len(verdicts) == held else [False] * held
