# Why: `stealth server run --workers N` spreads SYNs over N processes (NFQUEUE --queue-balance, by flow),
# so copies of one token from different addresses reach different workers at the same moment. A token
# must still pass at most once across all of them: the counters file, under a lock, decides.
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytestmark = pytest.mark.privileged
COPIES = 40


@pytest.fixture(scope="module")
def sl() -> Iterator[Any]:
    from tests.conftest import require_privileges

    require_privileges()
    from scripts.lib.stealthlab import stealth_lab

    # a resetting host: after the race below, alice's knock with the spent token gets an RST, and her
    # next counter follows at once (on a dropping host she would wait PENDING_KNOCK_SECONDS)
    with stealth_lab(server_id="workers", clients=("alice",), init_args=("--unauth", "reset"),
                     start=False) as lab:
        lab.start_server(["--workers", "2"])
        yield lab


def settled_counts(sl: Any, done: Callable[[dict[str, int]], bool], timeout: float = 6.0) -> dict[str, int]:
    """The summed counts once `done` holds (workers write theirs every second, the parent sums them
    every second), plus one more round so nothing is still on its way."""
    deadline = time.monotonic() + timeout
    while not done(sl.status()["counts"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.2)
    counts: dict[str, int] = sl.status()["counts"]
    return counts


def test_logins_through_two_workers(sl: Any) -> None:
    assert "workers=2" in sl.ready_line and "queue=50-51" in sl.ready_line
    for _ in range(6):
        assert sl.ssh("alice", sl.srv.ip4).returncode == 0
    assert settled_counts(sl, lambda c: c.get("valid", 0) >= 6).get("valid") == 6


def test_one_token_from_many_addresses_passes_once_across_workers(sl: Any) -> None:
    from scapy.layers.inet import IP, TCP
    from stealth_connect.profiles import load_profile

    from scripts.lib.netlab import send_raw
    from stealth.core.token import derive

    addresses = [f"198.51.100.{i}" for i in range(10, 10 + COPIES)]
    for addr in addresses:  # the attacker owns many addresses, so the copies hash to both queues
        sl.atk.run(["ip", "addr", "add", f"{addr}/24", "dev", "eth0"])
    prof = load_profile(sl.client_dirs["alice"] / "hosts" / f"{sl.srv.ip4}.toml")
    knock = derive(prof.key, prof.binding, 22, sl.counter("alice") + 1)  # the client's next token
    opts = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7)]
    copies = [bytes(IP(src=a, dst=sl.srv.ip4) / TCP(sport=knock.sport, dport=22, seq=knock.isn, flags="S",
                                                    options=opts)) for a in addresses]
    before = sl.status()["counts"]
    with sl.atk.capture(f"tcp and src host {sl.srv.ip4}") as cap:
        send_raw(sl.atk, *copies)
        time.sleep(1.5)
    synacks = [p for p in cap.packets() if str(p["TCP"].flags) == "SA"]
    assert len(synacks) == 1, [p.summary() for p in synacks]  # exactly one copy got in
    after = settled_counts(sl, lambda c: c.get("replay", 0) - before.get("replay", 0) >= COPIES - 1)
    assert after.get("valid", 0) - before.get("valid", 0) == 1
    assert after.get("replay", 0) - before.get("replay", 0) == COPIES - 1
    for worker in (0, 1):  # both workers really held a copy (else this proves nothing about the race)
        seen = sl.state_dir / f"status.w{worker}.json"
        counts = json.loads(seen.read_text())["counts"]
        assert counts.get("replay", 0) + counts.get("valid", 0) > 0, (worker, counts)
    result = sl.ssh("alice", sl.srv.ip4)  # alice lost that counter, not her access
    assert result.returncode == 0, result.stderr


def test_rules_apply_keeps_the_running_workers_queues(sl: Any) -> None:
    from scripts.lib.stealthlab import tool

    def queue_rules() -> list[str]:
        lines = sl.srv.run(["iptables-save", "-t", "mangle"]).stdout.splitlines()
        return [ln for ln in lines if "NFQUEUE" in ln]

    before = queue_rules()
    assert before and all("--queue-balance 50:51" in ln for ln in before)
    proc = sl.srv.popen([tool("stealth"), "server", "rules", "apply", "--state-dir", str(sl.state_dir),
                         "--confirm-within", "2"])
    time.sleep(1.0)
    during = queue_rules()
    proc.communicate(timeout=30)
    assert during and all("--queue-balance 50:51" in ln for ln in during)  # not just worker 0's queue
    assert queue_rules() == before
