# Why: the only import of netfilterqueue. It binds a queue with a socket buffer big enough for the
# queue (or the library silently loses packets), hands each payload to a callback that returns
# (accept?, mark), and turns any exception into a DROP: nothing a packet does may escape run().
import select
import socket
import warnings
from collections.abc import Callable
from typing import Any

from stealth.constants import NFQUEUE_COPY_BYTES, NFQUEUE_MAX_LEN, NFQUEUE_SOCKET_BYTES_PER_PACKET
from stealth.errors import StealthError

Handler = Callable[[bytes], int | None]  # payload -> mark to accept with (0: accept unmarked), None: drop


class Queue:
    def __init__(self, queue_num: int, handler: Handler, on_error: Callable[[BaseException], None]) -> None:
        from netfilterqueue import NetfilterQueue

        self._handler = handler
        self._on_error = on_error
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
            mark = self._handler(pkt.get_payload())
        except BaseException as e:  # noqa: BLE001 -- a packet must never stop the server
            mark = None
            self._on_error(e)
        try:
            if mark is None:
                pkt.drop()
            else:
                if mark:
                    pkt.set_mark(mark)
                pkt.accept()
        except BaseException as e:  # noqa: BLE001
            self._on_error(e)

    def poll(self, timeout: float) -> None:
        """Handle every queued packet, waiting up to `timeout` seconds for the first one."""
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if ready:
            self._nfq.run(block=False)

    def close(self) -> None:
        self._nfq.unbind()
        self._sock.detach()
