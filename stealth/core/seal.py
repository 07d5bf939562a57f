# Why: a valid token alone (stolen from the wire, raced by an on-path party, guessed, or a knock the
# server never heard) must reach nothing behind a sealed port. Only the key holder can derive the
# connection's session key, so the first bytes the client sends are a MAC under it, and the server
# answers with a MAC of its own before the service says anything: each side then knows the other holds
# the key. The session key belongs to one accepted token, and a token is accepted once, so a proof can
# never serve another connection. Pure: the session key comes in, 16 bytes go out.
from stealth.constants import PROOF_BYTES, PROOF_CLIENT_PERSON, PROOF_SERVER_PERSON
from stealth.core.secret import Secret
from stealth.core.token import mac


def client_proof(session_key: Secret) -> bytes:
    """The PROOF_BYTES the client sends first on a sealed port."""
    return mac(session_key, PROOF_CLIENT_PERSON, b"", PROOF_BYTES)


def server_proof(session_key: Secret) -> bytes:
    """The PROOF_BYTES the server answers with once the client's proof checked out."""
    return mac(session_key, PROOF_SERVER_PERSON, b"", PROOF_BYTES)
