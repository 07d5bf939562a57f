# Why: the core tests need real SYN bytes and small enrolled tables. Packets are crafted with scapy here
# only, in tests (the product never crafts a knock; the client's kernel sends it), so that a second,
# independent implementation of IP/TCP encoding and checksums checks the core's parser.
import ipaddress
from collections.abc import Iterable
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from stealth.core.gate import Gate
from stealth.core.secret import Secret
from stealth.core.slots import CBITS
from stealth.core.table import ClientSpec, Entry, TokenTable
from stealth.core.token import Binding, Knock, PortRange, derive

SRC4, DST4 = "198.51.100.10", "198.51.100.1"
SRC6, DST6 = "2001:db8::10", "2001:db8::1"
SERVER_ID = "ssh.example.org"
T0 = 1_000_000.0


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def tcp_options(tsval: int | None) -> list[tuple[str, Any]]:
    """Linux's SYN options, in Linux's order; the timestamp option only when tsval is given."""
    opts: list[tuple[str, Any]] = [("MSS", 1460), ("SAckOK", b"")]
    if tsval is not None:
        opts.append(("Timestamp", (tsval, 0)))
    else:
        opts += [("NOP", None), ("NOP", None)]
    opts += [("NOP", None), ("WScale", 7)]
    return opts


def syn(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    isn: int,
    *,
    tsval: int | None = 1000,
    flags: str | int = "S",
    payload: bytes = b"",
    **ip_fields: Any,
) -> bytes:
    """Raw IP bytes of a TCP segment (by default a Linux-like bare SYN) with correct checksums."""
    tcp = TCP(sport=sport, dport=dport, seq=isn, flags=flags, window=64240, options=tcp_options(tsval))
    layer = IPv6(src=src, dst=dst, **ip_fields) if ":" in src else IP(src=src, dst=dst, **ip_fields)
    pkt = layer / tcp
    if payload:
        pkt = pkt / payload
    return bytes(pkt)


def knock_syn(knock: Knock, src: str = SRC4, dst: str = DST4, sport: int | None = None, **kw: Any) -> bytes:
    """The SYN a client sends for `knock` (sport: the kernel's pick when the knock leaves it open)."""
    port = knock.sport if knock.sport is not None else sport
    assert port is not None
    return syn(src, dst, port, knock.dport, knock.isn, **kw)


def key_of(seed: int) -> Secret:
    return Secret(bytes((seed + i) % 256 for i in range(32)))


def spec(
    name: str = "alice",
    key: Secret | None = None,
    ports: tuple[int, ...] = (22,),
    *,
    port_bits: bool = True,
    source: str | None = None,
    server_id: str = SERVER_ID,
    port_range: PortRange | None = None,
) -> ClientSpec:
    binding = Binding(
        server_id=server_id,
        port_bits=port_bits,
        ports=port_range or PortRange(),
        source=packed(source) if source else None,
    )
    return ClientSpec(name=name, key=key or key_of(len(name)), binding=binding, ports=ports)


def gate_for(*specs: ClientSpec, last: int = 0, window: int = 16) -> Gate:
    table = TokenTable(window)
    for s in specs:
        table.add(s, last)
    return Gate(table)


def knock_of(client: ClientSpec, counter: int, dport: int | None = None) -> Knock:
    return derive(client.key, client.binding, dport if dport is not None else client.ports[0], counter)


def sync(table: TokenTable, clients: Iterable[tuple[ClientSpec, int]]) -> None:
    """table.sync_steps(clients) run to the end, as a server's reload does between packets."""
    for _ in table.sync_steps(clients):
        pass


def tokens(table: TokenTable) -> list[tuple[int, Entry]]:
    """Every token in `table` as (tag, Entry), read from its slot arrays (the table never lists them)."""
    dports = {pi: port for port, pi in table.port_index.items()}
    return [(word >> CBITS, table._entry(i, word >> CBITS, dports[word >> CBITS >> 49]))
            for i, word in enumerate(table.slots) if word]
