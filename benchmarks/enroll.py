# Why: the benchmarks need thousands to a million enrolled clients. They enroll them the way an admin
# would at that size, through the bulk path (ServerState.add_clients, which `stealth server add-clients`
# also uses: one streamed rewrite of clients.jsonl), and precompute the wire image of valid knocks with
# stealth.core.token.derive (the same function the client uses) as records for the C sender.
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from stealth.core.secret import Secret
from stealth.core.token import Binding, derive
from stealth.server_state import ServerState

FLOOD_NET = ipaddress.ip_network("198.18.0.0/15")  # spoofed benchmark sources only


@dataclass(frozen=True)
class BenchClient:
    name: str
    key: bytes


def enroll_clients(state_dir: Path, count: int, ports: tuple[int, ...],
                   prefix: str = "bench") -> list[BenchClient]:
    """Enroll `count` fresh clients in one bulk call; their keys come back for building knocks."""
    profiles = ServerState(state_dir).add_clients((f"{prefix}{i:07d}" for i in range(count)), ports)
    return [BenchClient(p.name, p.key.value) for p in profiles]


def write_tokens(path: Path, clients: list[BenchClient], server_id: str, dport: int, counters: range,
                 seed: int = 0) -> int:
    """Records for synflood: for each counter, every client once (so consecutive knocks of one client are
    len(clients) packets apart and a lost packet never pushes a client out of its window). Source
    addresses are spoofed from 198.18.0.0/15. Returns the number of records."""
    binding = Binding(server_id)
    keys = [Secret(c.key) for c in clients]
    base = int(FLOOD_NET.network_address)
    rec = struct.Struct("<4sHI")
    out = bytearray()
    n = seed
    for counter in counters:
        for key in keys:
            knock = derive(key, binding, dport, counter)
            assert knock.sport is not None
            src = (base + 1 + (n * 7919) % (FLOOD_NET.num_addresses - 2)).to_bytes(4, "big")
            out += rec.pack(src, knock.sport, knock.isn)
            n += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(out)
    os.replace(tmp, path)
    return len(out) // rec.size
