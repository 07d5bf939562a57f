# Why: the proofs of a sealed port are protocol (docs/PROTOCOL.md section 7): both ends must compute the
# same 16 bytes from the session key, the two directions must differ (a server cannot be fooled by its
# own proof reflected back), and a proof belongs to one session key. Pinned on the published vectors.
import json
from pathlib import Path
from typing import Any

import pytest

from stealth.core.seal import client_proof, server_proof
from stealth.core.secret import Secret

VECTORS_JSON = Path(__file__).parent.parent / "vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_JSON.read_text())["vectors"]


@pytest.mark.parametrize("v", VECTORS, ids=[v["name"][:40] for v in VECTORS])
def test_proofs_match_the_vectors(v: dict[str, Any]) -> None:
    key = Secret(bytes.fromhex(v["session_key"]))
    assert client_proof(key).hex() == v["client_proof"]
    assert server_proof(key).hex() == v["server_proof"]
    assert client_proof(key) != server_proof(key)


def test_each_session_key_has_its_own_proofs() -> None:
    proofs = {client_proof(Secret(bytes.fromhex(v["session_key"]))) for v in VECTORS}
    assert len(proofs) == len(VECTORS)
    flipped = bytearray(bytes.fromhex(VECTORS[0]["session_key"]))
    flipped[0] ^= 1
    assert client_proof(Secret(bytes(flipped))).hex() != VECTORS[0]["client_proof"]
