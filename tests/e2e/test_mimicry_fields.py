# Why: on a host that resets, single probes must not tell the protected port from an unused neighbour:
# the RST (or silence, or ICMP error) must be the kernel's own, field by field. Each probe goes to port
# 22 and to unused port 23 from the attacker namespace, built with scapy and sent raw; the replies are
# compared on flags, window, TTL/hop limit, IP ID behaviour, TOS / traffic class, flow label, IP options,
# ICMP type and code. A spoofed out-of-window packet on an open session's tuple must get what an
# unprotected socket gives (an ACK), not an RST.
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.privileged
Make = Callable[[int, int, dict[str, Any]], Any]  # (dport, sport, tcp fields) -> scapy packet
Build = Callable[[int, int], list[bytes]]  # (dport, sport) -> the raw packets of one probe


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    with stealth_lab(server_id="fields", clients=("alice",), start=False) as sl:
        sl.start_server()
        assert "ipv4:reset" in sl.ready_line and "ipv6:reset" in sl.ready_line, sl.ready_line
        yield sl


def _v4(lab: Any, **ip: Any) -> Make:
    from scapy.layers.inet import IP, TCP

    return lambda dport, sport, tcp: IP(src=lab.atk.ip4, dst=lab.srv.ip4, **ip) / TCP(sport=sport,
                                                                                   dport=dport, **tcp)


def _v6(lab: Any, **ip: Any) -> Make:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    return lambda dport, sport, tcp: IPv6(src=lab.atk.ip6, dst=lab.srv.ip6, **ip) / TCP(sport=sport,
                                                                                     dport=dport, **tcp)


def probes(lab: Any) -> dict[str, Build]:
    """name -> builder(dport, sport) of the raw packets of one probe."""
    from scapy.layers.inet import IPOption_NOP, IPOption_RR, IPOption_Timestamp
    from scapy.layers.inet6 import IPv6ExtHdrFragment

    def one(make: Make, **tcp: Any) -> Build:
        return lambda dport, sport: [bytes(make(dport, sport, {"seq": 1000, **tcp}))]

    def malformed(make: Make, doff: int) -> Build:
        return lambda dport, sport: [bytes(make(dport, sport, {"seq": 1000, "flags": "S", "dataofs": doff}))]

    def cut_v6_header(dport: int, sport: int) -> list[bytes]:
        from scapy.layers.inet import TCP
        from scapy.layers.inet6 import IPv6

        tcp = bytes(TCP(sport=sport, dport=dport, flags="S", seq=1000) / (b"x" * 32))
        first = IPv6(src=lab.atk.ip6, dst=lab.srv.ip6, nh=44) / IPv6ExtHdrFragment(nh=6, m=1, id=sport,
                                                                                   offset=0) / tcp[:8]
        rest = IPv6(src=lab.atk.ip6, dst=lab.srv.ip6, nh=44) / IPv6ExtHdrFragment(nh=6, m=0, id=sport,
                                                                                  offset=1) / tcp[8:]
        return [bytes(first), bytes(rest)]

    return {
        "syn tos 0x10": one(_v4(lab, tos=0x10), flags="S"),
        "syn tos 0xb8": one(_v4(lab, tos=0xB8), flags="S"),
        "ack tos 0x28": one(_v4(lab, tos=0x28), flags="A", ack=77),
        "fin tos 0x04": one(_v4(lab, tos=0x04), flags="F"),
        "syn record-route": one(_v4(lab, options=[IPOption_RR(routers=["0.0.0.0"] * 4)]), flags="S"),
        "syn timestamp option": one(_v4(lab, options=[IPOption_Timestamp(flg=0), IPOption_NOP()]),
                                    flags="S"),
        "syn data offset 4": malformed(_v4(lab), 4),
        "syn data offset 15": malformed(_v4(lab), 15),
        "syn df": one(_v4(lab, flags="DF", id=4242), flags="S"),
        "v6 syn tclass 0x28 flow label": one(_v6(lab, tc=0x28, fl=0x12345), flags="S"),
        "v6 ack tclass 0xb8": one(_v6(lab, tc=0xB8, fl=0xABCDE), flags="A", ack=9),
        "v6 xmas": one(_v6(lab, tc=0x10, fl=0x1), flags="FPU"),
        "v6 syn data offset 4": malformed(_v6(lab, tc=0x10), 4),
        "v6 first fragment cuts the tcp header": cut_v6_header,
    }


def answer(reply: Any | None) -> tuple[Any, ...] | None:
    """The fields of a reply that must match; None for silence. The kernel derives an IPv6 flow label
    from the flow's hash, so of the label it is compared whether it is zero (REJECT's is)."""
    if reply is None:
        return None
    ip = reply.getlayer("IP") or reply.getlayer("IPv6")
    if ip.version == 4:
        options = b"".join(bytes(o) for o in ip.options)
        head: tuple[Any, ...] = (4, ip.tos, ip.ttl, str(ip.flags), ip.id == 0, options)
    else:
        head = (6, ip.tc, ip.hlim, ip.fl == 0)
    icmp = reply.getlayer("ICMP") or reply.getlayer("ICMPv6ParamProblem")
    if icmp is not None:
        return (*head, "icmp", icmp.type, icmp.code)
    tcp = reply["TCP"]
    return (*head, str(tcp.flags), tcp.window, tuple(tcp.options), len(bytes(tcp.payload)))


def reply_to(packets: list[Any], lab: Any, sport: int) -> Any | None:
    from scapy.layers.inet import TCPerror

    for p in packets:
        ip = p.getlayer("IP") or p.getlayer("IPv6")
        if ip is None or ip.src not in (lab.srv.ip4, lab.srv.ip6):
            continue
        tcp = p.getlayer("TCP")
        if tcp is not None and tcp.dport == sport:
            return p
        err = p.getlayer(TCPerror)
        if err is not None and err.sport == sport:
            return p
        if p.haslayer("ICMPv6ParamProblem"):
            inner = bytes(p["ICMPv6ParamProblem"].payload)
            if len(inner) >= 50 and int.from_bytes(inner[48:50], "big") == sport:
                return p
    return None


def test_every_probe_gets_the_unused_ports_exact_answer(lab: Any) -> None:
    from scripts.lib.netlab import send_raw

    table = probes(lab)
    with lab.atk.capture(f"host {lab.srv.ip4} or host {lab.srv.ip6}") as cap:
        for i, build in enumerate(table.values()):
            for dport, base in ((22, 20000), (23, 40000)):
                send_raw(lab.atk, *build(dport, base + i), strict=False)
        time.sleep(1.5)
    packets = cap.packets()
    answered = 0
    for i, name in enumerate(table):
        ours, theirs = answer(reply_to(packets, lab, 20000 + i)), answer(reply_to(packets, lab, 40000 + i))
        print(f"{name}: protected {ours} unused {theirs}")
        assert ours == theirs, (name, ours, theirs)
        answered += theirs is not None
    assert answered >= 8  # the kernel answers most of them; silence alone would prove nothing


def test_out_of_window_packet_on_an_open_session_gets_the_sockets_ack(lab: Any) -> None:
    from scapy.layers.inet import IP, TCP

    from scripts.lib.netlab import send_raw

    session = lab.cli.popen(lab.ssh_argv("alice", lab.srv.ip4, command="sleep 6"))
    try:
        from scripts.lib.netlab import wait_for

        def tuple_of_session() -> list[str]:
            out: str = lab.srv.run(["ss", "-Htn", "state", "established", f"src {lab.srv.ip4}:22"]).stdout
            return out.split()

        wait_for(lambda: bool(tuple_of_session()), timeout=20, what="the session")
        peer = tuple_of_session()[-1]
        cport = int(peer.rsplit(":", 1)[1])
        spoof = IP(src=lab.cli.ip4, dst=lab.srv.ip4) / TCP(sport=cport, dport=22, flags="A", seq=12345,
                                                           ack=54321)
        with lab.srv.capture(f"tcp and src host {lab.srv.ip4} and dst port {cport}") as cap:
            send_raw(lab.atk, bytes(spoof))
            time.sleep(0.7)
        flags = [str(p["TCP"].flags) for p in cap.packets()]
        assert "A" in flags and not any("R" in f for f in flags), flags  # a challenge/dup ACK, no RST
    finally:
        session.wait(timeout=30)
