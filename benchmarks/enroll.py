# Why: the benchmarks need thousands to a million enrolled clients. `stealth server add-client` rewrites
# clients.toml once per client (quadratic), so this writes the documented clients.toml format directly,
# in one atomic 0600 write, and precomputes the wire image of valid knocks with stealth.core.token.derive
# (the same function the client uses) as records for the C sender.
import base64
import ipaddress
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from stealth.constants import DEFAULT_WINDOW
from stealth.core.secret import Secret
from stealth.core.token import Binding, derive
from stealth.store import atomic_write

FLOOD_NET = ipaddress.ip_network("198.18.0.0/15")  # spoofed benchmark sources only


@dataclass(frozen=True)
class BenchClient:
    name: str
    key: bytes


def make_clients(count: int, prefix: str = "bench") -> list[BenchClient]:
    return [BenchClient(f"{prefix}{i:07d}", secrets.token_bytes(32)) for i in range(count)]


def client_sections(clients: list[BenchClient], server_id: str, ports: tuple[int, ...],
                    window: int = DEFAULT_WINDOW) -> Iterator[str]:
    """TOML text of [clients.NAME] tables, field for field what ServerState._save_clients writes."""
    port_list = ", ".join(str(p) for p in ports)
    for c in clients:
        yield (
            f'[clients.{c.name}]\nformat = "stealth-profile-v1"\nname = "{c.name}"\n'
            f'server_id = "{server_id}"\nkey = "{base64.b64encode(c.key).decode()}"\n'
            f"ports = [{port_list}]\nwindow = {window}\nport_bits = true\nport_low = 32768\n"
            f'port_high = 60999\nport_step = 2\nenrollment = "{secrets.token_hex(8)}"\ncounter_floor = 0\n\n'
        )


def append_clients(clients_path: Path, clients: list[BenchClient], server_id: str,
                   ports: tuple[int, ...]) -> None:
    """Add `clients` to an existing clients.toml (keeping its clients), atomically, mode 0600."""
    old = clients_path.read_text() if clients_path.exists() else ""
    if old.strip() in ("", "[clients]"):
        old = ""
    text = old + ("\n" if old and not old.endswith("\n") else "") + "".join(
        client_sections(clients, server_id, ports))
    atomic_write(clients_path, text.encode())


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
