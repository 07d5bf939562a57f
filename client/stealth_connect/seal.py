# Why: on a sealed port the server hands the connection to the service only after the first bytes prove
# the knock's session key, and answers with its own proof first. This is the client's half, shared by
# stealth-connect (relay and --fdpass) and the connect() API, so none of them needs a flag.
from __future__ import annotations

import socket

from stealth.constants import PROOF_BYTES
from stealth.core.seal import client_proof, server_proof
from stealth.errors import ClientError

try:  # hmac.compare_digest's own fallback; importing hmac loads hashlib and OpenSSL (+3.7 ms at start)
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover -- an interpreter without it
    from hmac import compare_digest  # type: ignore[no-redef]

TYPE_CHECKING = False  # mypy treats this name as True; typing's import costs ~3.4 ms at start
if TYPE_CHECKING:
    from stealth.core.secret import Secret


def prove(sock: socket.socket, session_key: Secret, timeout: float, where: str) -> None:
    """A sealed port: send our proof of the session key, and check the server's before anything else is
    read, so the caller knows it reached the server that holds this profile's key."""
    try:
        sock.settimeout(timeout)
        sock.sendall(client_proof(session_key))
        got = b""
        while len(got) < PROOF_BYTES:
            chunk = sock.recv(PROOF_BYTES - len(got))
            if not chunk:
                break
            got += chunk
        sock.settimeout(None)
    except OSError as e:
        sock.close()
        raise ClientError(f"{where} took the knock but then {e.strerror or 'timed out'} before proving "
                          "itself (a sealed port)") from None
    if not compare_digest(got, server_proof(session_key)):
        sock.close()
        raise ClientError(f"{where} took the knock but did not prove it holds this profile's key (a sealed "
                          "port): not the stealth server this profile was made for, or the port is not "
                          "sealed there any more")
