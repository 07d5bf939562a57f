# Why: known-answer vectors pin the wire protocol. This script computes them ONCE from an independent,
# spec-only implementation (hashlib + struct, no stealth.core), checks that stealth.core agrees, and
# writes tests/vectors.json. It never silently rewrites an existing vectors.json: without --force it
# only verifies the stored vectors still hold. It always refreshes the generated blocks of
# docs/PROTOCOL.md (vectors and entropy table) from vectors.json, so the published spec cannot drift;
# --check fails instead of writing when anything would change.
#
# Run with the project's interpreter:  .venv/bin/python scripts/gen-vectors [--force] [--check]
# (scripts/gen-vectors is a shim; the code lives here so ruff and mypy see it).
import argparse
import hashlib
import ipaddress
import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors.json"
PROTOCOL = ROOT / "docs" / "PROTOCOL.md"
VECTORS_BEGIN = "<!-- gen-vectors:vectors:begin -->"
VECTORS_END = "<!-- gen-vectors:vectors:end -->"
ENTROPY_BEGIN = "<!-- gen-vectors:entropy:begin -->"
ENTROPY_END = "<!-- gen-vectors:entropy:end -->"

# The protocol, restated from docs/PROTOCOL.md on purpose (not imported from stealth.constants).
VERSION = 1
TOKEN_PERSON = b"stealth-token-v1"
SESSION_PERSON = b"stealth-sess-v01"
PROOF_CLIENT_PERSON = b"stealth-prf-c-v1"
PROOF_SERVER_PERSON = b"stealth-prf-s-v1"
ISN_MODULUS = 2**32 - 1
RECOVERY_SLOT_SECONDS = 600
RECOVERY_COUNTER_FLAG = 2**63
RECOVERY_TOKENS = 3  # per client and port: the server's slot and one either side

# Inputs only. Outputs are computed below.
INPUTS: list[dict[str, Any]] = [
    {
        "name": "first counter, default port range",
        "key": bytes(range(32)).hex(),
        "server_id": "ssh.example.org",
        "dport": 22,
        "counter": 1,
        "source": None,
        "port_bits": True,
        "ports": [32768, 60999, 2],
    },
    {
        "name": "last counter (2^64-1), all-ones key",
        "key": "ff" * 32,
        "server_id": "db-7",
        "dport": 6379,
        "counter": 2**64 - 1,
        "source": None,
        "port_bits": True,
        "ports": [32768, 60999, 2],
    },
    {
        "name": "bound IPv4 source, counter 2",
        "key": hashlib.sha256(b"stealth test vector key 3").hexdigest(),
        "server_id": "gw",
        "dport": 443,
        "counter": 2,
        "source": "198.51.100.7",
        "port_bits": True,
        "ports": [32768, 60999, 2],
    },
    {
        "name": "bound IPv6 source",
        "key": hashlib.sha256(b"stealth test vector key 4").hexdigest(),
        "server_id": "ssh.example.org",
        "dport": 22,
        "counter": 1000,
        "source": "2001:db8::1",
        "port_bits": True,
        "ports": [32768, 60999, 2],
    },
    {
        "name": "port bits off (NAT mode)",
        "key": hashlib.sha256(b"stealth test vector key 5").hexdigest(),
        "server_id": "ssh.example.org",
        "dport": 22,
        "counter": 42,
        "source": None,
        "port_bits": False,
        "ports": [32768, 60999, 2],
    },
    {
        "name": "UTF-8 server id, counter 2^32, port 65535, odd-and-even range 49152-65535",
        "key": hashlib.sha256(b"stealth test vector key 6").hexdigest(),
        "server_id": "bücher.example",
        "dport": 65535,
        "counter": 2**32,
        "source": None,
        "port_bits": True,
        "ports": [49152, 65535, 1],
    },
    {
        "name": "all-zero key, bound IPv4 source, port bits off",
        "key": "00" * 32,
        "server_id": "a",
        "dport": 1,
        "counter": 65537,
        "source": "203.0.113.200",
        "port_bits": False,
        "ports": [32768, 60999, 2],
    },
    {
        "name": "recovery token of slot 2941000 (unix time 1764600000-1764600599); accepted, it moves the "
                "client to base 2941000 * 2^24 = 49341792256000",
        "key": hashlib.sha256(b"stealth test vector key 8").hexdigest(),
        "server_id": "ssh.example.org",
        "dport": 22,
        "counter": RECOVERY_COUNTER_FLAG | (1764600000 // RECOVERY_SLOT_SECONDS),
        "source": None,
        "port_bits": True,
        "ports": [32768, 60999, 2],
    },
]


def spec_token_input(v: dict[str, Any]) -> bytes:
    """The MAC input of vector `v`, assembled byte by byte as docs/PROTOCOL.md states it."""
    sid: bytes = v["server_id"].encode("utf-8")
    dport: int = v["dport"]
    counter: int = v["counter"]
    src = ipaddress.ip_address(v["source"]).packed if v["source"] else b""
    return (
        bytes([VERSION, len(sid)])
        + sid
        + dport.to_bytes(2, "big")
        + counter.to_bytes(8, "big")
        + bytes([len(src)])
        + src
    )


def proof(session_key: bytes, person: bytes) -> str:
    """The 16-byte keyed BLAKE2b proof of a session key under `person`, as hex."""
    return hashlib.blake2b(b"", digest_size=16, key=session_key, person=person).hexdigest()


def spec_outputs(v: dict[str, Any]) -> dict[str, Any]:
    """Every output of vector `v` (token, ISN, source port, session key, proofs) from the spec alone."""
    key = bytes.fromhex(v["key"])
    data = spec_token_input(v)
    token = hashlib.blake2b(data, digest_size=32, key=key, person=TOKEN_PERSON).digest()
    session = hashlib.blake2b(data, digest_size=32, key=key, person=SESSION_PERSON).digest()
    word0, word1 = struct.unpack_from(">II", token)
    low, high, step = v["ports"]
    count = (high - low) // step + 1
    return {
        "mac_input": data.hex(),
        "token": token.hex(),
        "isn": 1 + word0 % ISN_MODULUS,
        "sport": low + step * (word1 % count) if v["port_bits"] else None,
        "session_key": session.hex(),
        "client_proof": proof(session, PROOF_CLIENT_PERSON),
        "server_proof": proof(session, PROOF_SERVER_PERSON),
    }


def core_outputs(v: dict[str, Any]) -> dict[str, Any]:
    """The same, computed by stealth.core, which must agree with the spec restatement."""
    sys.path.insert(0, str(ROOT))
    from stealth.constants import TOKEN_DIGEST_BYTES
    from stealth.constants import TOKEN_PERSON as CORE_TOKEN_PERSON
    from stealth.core.seal import client_proof, server_proof
    from stealth.core.secret import Secret
    from stealth.core.token import Binding, PortRange, derive, mac, token_input

    low, high, step = v["ports"]
    binding = Binding(
        server_id=v["server_id"],
        port_bits=v["port_bits"],
        ports=PortRange(low, high, step),
        source=ipaddress.ip_address(v["source"]).packed if v["source"] else None,
    )
    key = Secret(bytes.fromhex(v["key"]))
    data = token_input(binding, v["dport"], v["counter"])
    knock = derive(key, binding, v["dport"], v["counter"])
    return {
        "mac_input": data.hex(),
        "token": mac(key, CORE_TOKEN_PERSON, data, TOKEN_DIGEST_BYTES).hex(),
        "isn": knock.isn,
        "sport": knock.sport,
        "session_key": knock.session_key.value.hex(),
        "client_proof": client_proof(knock.session_key).hex(),
        "server_proof": server_proof(knock.session_key).hex(),
    }


def build_vectors() -> list[dict[str, Any]]:
    """The inputs with their outputs; exits if stealth.core disagrees with the spec restatement."""
    out = []
    for v in INPUTS:
        spec = spec_outputs(v)
        core = core_outputs(v)
        if spec != core:
            raise SystemExit(f"gen-vectors: stealth.core disagrees with the spec on {v['name']!r}:\n"
                             f"spec {spec}\ncore {core}")
        out.append({**v, **spec})
    return out


def vectors_markdown(vectors: list[dict[str, Any]]) -> str:
    """The generated vectors block of docs/PROTOCOL.md, markers included."""
    lines = [VECTORS_BEGIN, ""]
    for i, v in enumerate(vectors, 1):
        low, high, step = v["ports"]
        lines += [
            f"#### Vector {i}: {v['name']}",
            "",
            "```",
            f"key          {v['key']}",
            f"server_id    {v['server_id']!s} (UTF-8 {v['server_id'].encode().hex()})",
            f"dport        {v['dport']}",
            f"counter      {v['counter']}",
            f"source       {v['source'] or '(not bound)'}",
            f"port_bits    {'on' if v['port_bits'] else 'off'}",
            f"port range   {low}..{high} step {step}",
            f"mac_input    {v['mac_input']}",
            f"token        {v['token']}",
            f"isn          {v['isn']} (0x{v['isn']:08x})",
            f"sport        {v['sport'] if v['sport'] is not None else '(any: not used)'}",
            f"session_key  {v['session_key']}",
            f"client_proof {v['client_proof']}",
            f"server_proof {v['server_proof']}",
            "```",
            "",
        ]
    lines.append(VECTORS_END)
    return "\n".join(lines)


def entropy_rows(window: int = 16, ports: int = 1) -> list[dict[str, float]]:
    """Bits left to a forger and the expected forged SYNs, per port-bits mode and client count."""
    isn_bits = math.log2(ISN_MODULUS)
    port_bits = math.log2((60999 - 32768) // 2 + 1)
    rows = []
    live = window + RECOVERY_TOKENS  # live tokens per client and port
    for port_mode in (True, False):
        for clients in (1, 1000, 100_000):
            bits = isn_bits + (port_bits if port_mode else 0.0) - math.log2(live * clients * ports)
            syns = 2.0**bits
            rows.append({"port_bits": port_mode, "clients": clients, "bits": bits, "syns": syns,
                         "t100k": syns / 100_000, "t1m": syns / 1_000_000})
    return rows


def human_seconds(s: float) -> str:
    """A duration in the largest unit that fits (years down to ms)."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if s >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.1f} s" if s >= 1 else f"{s * 1000:.0f} ms"


def entropy_markdown() -> str:
    """The generated entropy table of docs/PROTOCOL.md, markers included."""
    lines = [
        ENTROPY_BEGIN,
        "",
        "| source-port bits | clients | bits left | expected forged SYNs (2^bits) "
        "| at 100k SYN/s | at 1M SYN/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in entropy_rows():
        lines.append(
            f"| {'on (45.79 bits)' if r['port_bits'] else 'off (32.00 bits)'} | {int(r['clients']):,} "
            f"| {r['bits']:.2f} | {r['syns']:.3g} | {human_seconds(r['t100k'])} | {human_seconds(r['t1m'])} |"
        )
    lines += ["", ENTROPY_END]
    return "\n".join(lines)


def splice(text: str, begin: str, end: str, block: str) -> str:
    """`text` with everything from `begin` to `end` (both included) replaced by `block`."""
    i, j = text.index(begin), text.index(end) + len(end)
    return text[:i] + block + text[j:]


def main() -> int:
    """Check (or with --force write) tests/vectors.json and refresh docs/PROTOCOL.md; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rewrite tests/vectors.json (changes the spec!)")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if anything would change")
    args = parser.parse_args()

    vectors = build_vectors()
    new_json = json.dumps({"about": "stealth known-answer vectors, see docs/PROTOCOL.md; made by "
                           "scripts/gen-vectors", "vectors": vectors}, indent=2, ensure_ascii=False) + "\n"
    if VECTORS.exists() and not args.force:
        stored = json.loads(VECTORS.read_text())["vectors"]
        if stored != vectors:
            print("gen-vectors: tests/vectors.json no longer matches the derivation", file=sys.stderr)
            return 1
    elif args.check:
        print("gen-vectors: tests/vectors.json missing", file=sys.stderr)
        return 1
    else:
        VECTORS.write_text(new_json)
        print(f"gen-vectors: wrote {VECTORS.relative_to(ROOT)}")

    stored = json.loads(VECTORS.read_text())["vectors"]
    doc = PROTOCOL.read_text()
    new_doc = splice(doc, VECTORS_BEGIN, VECTORS_END, vectors_markdown(stored))
    new_doc = splice(new_doc, ENTROPY_BEGIN, ENTROPY_END, entropy_markdown())
    if new_doc != doc:
        if args.check:
            print("gen-vectors: docs/PROTOCOL.md is out of date", file=sys.stderr)
            return 1
        PROTOCOL.write_text(new_doc)
        print(f"gen-vectors: updated {PROTOCOL.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
