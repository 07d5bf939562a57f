# Why: `stealth inspect` replays a capture through the very gate the live server uses (same table
# construction, same receive()), so recorded traffic and live traffic get identical verdicts. Counters
# advance only in memory: the state directory is read, never written.
import ipaddress
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stealth.core.gate import Gate, Verdict
from stealth.core.recovery import slot_of
from stealth.loader import build_table
from stealth.pcap import read_ip_packets
from stealth.server_state import ServerState


def describe_flow(packet: bytes) -> str:
    """Best-effort 'src:sport > dst:dport' for display; never raises."""
    try:
        if packet[0] >> 4 == 4:
            t = (packet[0] & 15) * 4
            src, dst = packet[12:16], packet[16:20]
        else:
            t = 40
            src, dst = packet[8:24], packet[24:40]
        sport, dport = struct.unpack_from("!HH", packet, t)
        return f"[{ipaddress.ip_address(src)}]:{sport} > [{ipaddress.ip_address(dst)}]:{dport}"
    except (IndexError, ValueError, struct.error):
        return "?"


def inspect_capture(state: ServerState, capture: Path) -> Iterator[dict[str, Any]]:
    """Replay `capture` through a gate built from the state directory as the daemon builds it: one dict per
    frame (index, verdict, reason, flow, client), "skip" for frames without IP. Counters advance in memory
    only; ConfigError for an unreadable capture or state file."""
    config = state.load_config()
    gate = Gate(build_table(state, config, state.load_counters()))
    for index, stamp, packet in read_ip_packets(capture):
        if packet is None:
            yield {"index": index, "verdict": "skip", "reason": "not_ip", "flow": "", "client": None}
            continue
        if slot_of(stamp) != gate.table.slot:  # recovery tokens as the server held them at that time
            gate.table.set_slot(slot_of(stamp))
        decision = gate.receive(packet, stamp)
        yield {
            "index": index,
            "verdict": "accept" if decision.verdict is Verdict.ACCEPT else "drop",
            "reason": str(decision.reason),
            "flow": describe_flow(packet),
            "client": decision.client,
        }
