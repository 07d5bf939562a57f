# Why: issue 13, logging. A refused knock that carried a known client's token (a replay of a spent one, a
# token bound to another source) leaves one warning with its source, in a key=value line fail2ban's
# shipped filter reads; junk leaves none; a flood of replays leaves no more lines than the rate limit
# allows, and one line saying how many were held back. One lab, one server run (the `run` fixture) serves
# the privileged tests; the limiter, the journald priorities, the gate's refusal commands and the filter's
# forms of a line are also checked without privileges.
import io
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stealth import logfmt
from stealth.constants import REFUSAL_LOG_BURST, REFUSAL_LOG_PER_SECOND, REFUSAL_SUMMARY_SECONDS
from stealth.core.gate import LogRefusal, Verdict
from stealth.core.packet import Reason
from stealth.core.ratelimit import LogLimiter
from tests.syns import SRC4, T0, gate_for, key_of, knock_of, knock_syn, packed, spec, syn

FILTER = Path(__file__).resolve().parents[2] / "stealth" / "fail2ban" / "stealth.conf"
REFUSED = re.compile(r"refused reason=(\w+) client=(\S+) port=(\d+) src=\[([^\]]+)\]:(\d+)$")
SUMMARY = re.compile(r"refusals not logged \(rate limit\) count=(\d+)(.*)$")
FLOOD = 2000


# --- the limiter (time passed in) --------------------------------------------------------------------------
def test_limiter_lets_a_burst_through_then_its_rate_and_counts_the_rest() -> None:
    lim = LogLimiter(rate=5.0, burst=20, interval=5.0)
    t = 100.0
    assert [lim.allow("replay", t) for _ in range(25)] == [True] * 20 + [False] * 5
    assert lim.allow("wrong_source", t)  # a bucket per key
    assert not lim.allow("replay", t + 0.1)  # half a token
    assert lim.allow("replay", t + 0.2) and not lim.allow("replay", t + 0.2)  # one token after 1/5 s
    assert [lim.allow("replay", t + 10) for _ in range(21)].count(True) == 20  # refilled to the burst only
    assert lim.suppressed == {"replay": 5 + 1 + 1 + 1}


def test_limiter_summary_once_per_interval_after_the_first_held_line() -> None:
    lim = LogLimiter(rate=1.0, burst=1, interval=5.0)
    assert lim.summary(0.0) is None and lim.summary(0.0, final=True) is None  # nothing held back
    assert lim.allow("replay", 10.0) and not lim.allow("replay", 10.0)
    assert lim.allow("wrong_source", 10.5) and not lim.allow("wrong_source", 10.5)
    assert lim.summary(14.9) is None  # not yet: 5 s after the first held line
    assert lim.summary(15.0) == {"replay": 1, "wrong_source": 1}
    assert lim.summary(15.0) is None and lim.suppressed == {}
    assert lim.allow("replay", 15.0) and not lim.allow("replay", 15.0)  # refilled, then held back again
    assert lim.summary(16.0) is None and lim.summary(16.0, final=True) == {"replay": 1}


def test_limiter_never_exceeds_its_allowance() -> None:
    lim = LogLimiter(rate=REFUSAL_LOG_PER_SECOND, burst=REFUSAL_LOG_BURST, interval=REFUSAL_SUMMARY_SECONDS)
    times = [i * 0.0007 for i in range(10_000)]  # 7 s of a 1428/s flood
    allowed = sum(lim.allow("replay", t) for t in times)
    assert lim.allowance(times[-1]) - 1 <= allowed <= lim.allowance(times[-1])
    assert lim.allowance(times[-1]) <= REFUSAL_LOG_BURST + 7 * REFUSAL_LOG_PER_SECOND
    assert allowed + lim.suppressed["replay"] == len(times)
    with pytest.raises(ValueError):
        LogLimiter(rate=0, burst=1, interval=1)


# --- journald priorities ------------------------------------------------------------------------------------
def test_journal_lines_carry_syslog_priorities_and_other_streams_none(tmp_path: Path) -> None:
    path = tmp_path / "stderr"
    with open(path, "w") as stream:
        st = os.fstat(stream.fileno())
        assert logfmt.stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logfmt.stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logfmt.stream_is_journal(stream, {})
        assert not logfmt.stream_is_journal(stream, {"JOURNAL_STREAM": "junk"})
        assert not logfmt.stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})  # no file descriptor
    fmt = logfmt.JournalFormatter("stealth: %(message)s")

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("stealth.server", level, __file__, 1, msg, None, None))

    assert line(logging.INFO, "accept client=alice") == "<6>stealth: accept client=alice"
    assert line(logging.WARNING, "refused reason=replay") == "<4>stealth: refused reason=replay"
    assert line(logging.ERROR, "a\nb") == "<3>stealth: a\n<3>b"
    assert line(logging.DEBUG, "x") == "<7>stealth: x" and line(logging.CRITICAL, "x") == "<2>stealth: x"


def test_configure_prefixes_priorities_only_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """The daemon's own set-up (logfmt.configure, as `stealth server run` calls it) in a fresh process whose
    stderr is a file: named by $JOURNAL_STREAM it gets priorities, otherwise today's lines."""
    import sys

    code = ("import logging, sys; from stealth import logfmt; "
            "logfmt.configure(logging.INFO, 'stealth: %(message)s', sys.stderr); "
            "log = logging.getLogger('stealth.server'); log.info('accept client=alice'); "
            "log.warning('refused reason=replay')")
    for journal in (True, False):
        err = tmp_path / f"stderr-{journal}"
        with open(err, "w") as stream:
            st = os.fstat(stream.fileno())
            env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
            if journal:
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            subprocess.run([sys.executable, "-c", code], stderr=stream, env=env, check=True, timeout=30)
        want = ["stealth: accept client=alice", "stealth: refused reason=replay"]
        if journal:
            want = ["<6>" + want[0], "<4>" + want[1]]
        assert err.read_text().splitlines() == want


# --- the gate's refusal commands ----------------------------------------------------------------------------
def test_gate_asks_to_log_replays_and_wrong_sources_with_their_source_and_nothing_else() -> None:
    alice = spec("alice", key_of(1), ports=(22,))
    pinned = spec("pinned", key_of(4), ports=(22,), source=SRC4)
    gate = gate_for(alice, pinned)
    knock = knock_of(alice, 1)
    assert gate.receive(knock_syn(knock), T0).verdict is Verdict.ACCEPT
    replay = gate.receive(knock_syn(knock, src="198.51.100.9"), T0)
    sport = knock.sport or 0
    assert replay.commands == (LogRefusal(Reason.REPLAY, "alice", 22, packed("198.51.100.9"), sport),)
    other = knock_of(pinned, 1)
    wrong = gate.receive(knock_syn(other, src="198.51.100.11"), T0)  # pinned to SRC4
    assert (wrong.verdict, wrong.reason) == (Verdict.DROP, Reason.WRONG_SOURCE)
    assert wrong.commands == (LogRefusal(Reason.WRONG_SOURCE, "pinned", 22, packed("198.51.100.11"),
                                         other.sport or 0),)
    junk = gate.receive(syn("198.51.100.11", "192.0.2.1", 40000, 22, 12345), T0)
    assert (junk.reason, junk.commands) == (Reason.UNKNOWN_TOKEN, ())


# --- the shipped fail2ban filter ----------------------------------------------------------------------------
def fail2ban_regex(log: Path) -> list[str]:
    """The addresses fail2ban-regex, with the shipped filter, finds in `log` (one per matching line)."""
    tool = shutil.which("fail2ban-regex")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("fail2ban-regex is missing (scripts/bootstrap installs fail2ban)")
        pytest.skip("fail2ban-regex is missing (scripts/bootstrap installs fail2ban)")
    out = subprocess.run([tool, "-o", "ip", str(log), str(FILTER)], capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.split()


def as_syslog(lines: list[str]) -> list[str]:
    """The lines as rsyslog writes them from the journal (date, host, identifier[pid])."""
    return [f"Mar  3 10:00:{i % 60:02d} gate stealth[4242]: {ln}" for i, ln in enumerate(lines)]


def test_filter_matches_refusals_in_every_form_and_nothing_else(tmp_path: Path) -> None:
    lines = [
        "stealth: ready queue=50 ports=22 clients=2 unauth=ipv4:drop workers=1",
        "stealth: accept client=alice port=22 src=[198.51.100.2]:37718 counter=1",
        "stealth: refused reason=replay client=alice port=22 src=[198.51.100.3]:40000",
        "stealth: refused reason=wrong_source client=bob@laptop port=22 src=[2001:db8::5]:40002",
        "stealth: refusals not logged (rate limit) count=1978 replay=1978",
        "stealth: refused reason=replay client=alice port=22 src=[198.51.100.3]:40000 and more",
    ]
    plain, dated = tmp_path / "plain.log", tmp_path / "syslog.log"
    plain.write_text("\n".join(lines) + "\n")
    dated.write_text("\n".join(as_syslog(lines)) + "\n")
    assert fail2ban_regex(plain) == ["198.51.100.3", "2001:db8::5"]
    assert fail2ban_regex(dated) == ["198.51.100.3", "2001:db8::5"]


# --- from a real run ----------------------------------------------------------------------------------------
@dataclass
class Run:
    log: Path  # the server's stderr, kept after the lab is gone
    before_flood: list[str]  # its lines once the single replay and wrong-source knock were logged
    replay_src: str
    replay_sport: int
    wrong_src: str
    wrong_sport: int
    counts: dict[str, int]  # the gate's counts (status.json) at the end
    flood_counted: int  # replays the gate counted during the flood (all but the first)
    limited_for: float  # seconds from the first replay to the end of the flood (plus the queue's drain)
    summary_while_running: bool


def lines_of(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def wait_for_lines(path: Path, pattern: str, n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(pattern in ln for ln in lines_of(path)) >= n:
            return True
        time.sleep(0.1)
    return False


def recorded_knock(sl: Any) -> bytes:
    """alice logs in through stealth-connect; the knock SYN as the server's interface received it."""
    with sl.srv.capture("tcp dst port 22 and tcp[tcpflags] & tcp-syn != 0") as cap:
        result = sl.ssh("alice", sl.srv.ip4)
        assert result.returncode == 0, result.stderr
    knocks = [bytes(p["IP"])[: p["IP"].len] for p in cap.packets() if p["IP"].src == sl.cli.ip4]
    assert knocks, "no knock captured"
    return knocks[0]


def moved(raw: bytes, src: str) -> bytes:
    """The same SYN from another source address (checksums recomputed)."""
    from scapy.layers.inet import IP, TCP

    pkt = IP(raw)
    pkt.src = src
    del pkt.chksum, pkt[TCP].chksum
    out: bytes = bytes(pkt)
    return out


def bound_knock(sl: Any, name: str, src: str) -> tuple[bytes, int]:
    """A fresh token of `name`'s (counter 1, port 22) in a SYN from `src`, and its source port."""
    from stealth_connect.profiles import load_profile

    from stealth.core.token import derive

    prof = load_profile(sl.client_dirs[name] / "hosts" / f"{sl.srv.ip4}.toml")
    knock = derive(prof.key, prof.binding, 22, 1)
    assert knock.sport is not None
    return syn(src, sl.srv.ip4, knock.sport, 22, knock.isn), knock.sport


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from tests.conftest import require_privileges

    require_privileges()
    from scapy.layers.inet import IP, TCP

    from scripts.lib.netlab import send_raw
    from scripts.lib.stealthlab import stealth_lab

    keep = tmp_path_factory.mktemp("refusals") / "server.log"
    with stealth_lab(server_id="refusals", init_args=("--unauth", "drop"), start=False) as sl:
        sl.enroll("bob", extra=["--bind-source", sl.cli.ip4])
        sl.start_server()
        knock = recorded_knock(sl)  # alice's, from the client's address (now exempt from the SYN limit)
        sl.atk.run(["hping3", "-q", "-S", "-p", "22", "--rand-source", "-i", "u1000", "-c", "300",
                    sl.srv.ip4], check=False, timeout=30)  # junk: unknown tokens
        start = time.monotonic()
        send_raw(sl.atk, moved(knock, sl.atk.ip4))  # the recorded knock, replayed from elsewhere
        wrong, wrong_sport = bound_knock(sl, "bob", sl.atk.ip4)  # bob's tokens are bound to the client
        send_raw(sl.atk, wrong)
        assert wait_for_lines(sl.server_log_path, "refused reason=", 2, timeout=5), \
            lines_of(sl.server_log_path)
        before_flood = lines_of(sl.server_log_path)
        send_raw(sl.cli, *[knock] * FLOOD, gap=0.0005)  # byte-exact, from the client's own address
        limited_for = time.monotonic() - start + 1.0
        summary = wait_for_lines(sl.server_log_path, "refusals not logged", 1,
                                 timeout=REFUSAL_SUMMARY_SECONDS + 3)
        sl.stop_server()
        shutil.copy(sl.server_log_path, keep)
        counts = sl.status()["counts"]  # written once more as the server stopped
        yield Run(keep, before_flood, sl.atk.ip4, int(IP(knock)[TCP].sport), sl.atk.ip4, wrong_sport,
                  counts, counts.get("replay", 0) - 1, limited_for, summary)


@pytest.mark.privileged
def test_a_replay_and_a_wrong_source_knock_each_leave_one_line_and_junk_none(run: Run) -> None:
    refusals = [m.groups() for ln in run.before_flood if (m := REFUSED.search(ln))]
    assert refusals == [
        ("replay", "alice", "22", run.replay_src, str(run.replay_sport)),
        ("wrong_source", "bob", "22", run.wrong_src, str(run.wrong_sport)),
    ], run.before_flood
    # nothing else: the accept of alice's login, the two refusals, and no line for 300 junk SYNs
    assert len(run.before_flood) == 3, run.before_flood
    assert "accept client=alice port=22" in run.before_flood[0], run.before_flood
    assert run.counts.get("unknown_token", 0) >= 200 and run.counts.get("wrong_source") == 1, run.counts
    assert not any(ln.startswith("<") for ln in lines_of(run.log))  # not journald: no priorities


@pytest.mark.privileged
def test_fail2ban_regex_with_the_shipped_filter_matches_the_servers_refusal_lines(run: Run,
                                                                                  tmp_path: Path) -> None:
    lines = lines_of(run.log)
    refused = [m.group(4) for ln in lines if (m := REFUSED.search(ln))]
    assert fail2ban_regex(run.log) == refused and refused[:2] == [run.replay_src, run.wrong_src]
    dated = tmp_path / "syslog.log"
    dated.write_text("\n".join(as_syslog(lines)) + "\n")
    assert fail2ban_regex(dated) == refused


@pytest.mark.privileged
def test_a_flood_of_replays_stays_within_the_rate_limit_and_says_how_many_were_held_back(run: Run) -> None:
    lines = lines_of(run.log)
    logged = [ln for ln in lines if "refused reason=replay" in ln]
    held = sum(int(m.group(1)) for ln in lines if (m := SUMMARY.search(ln)))
    allowance = REFUSAL_LOG_BURST + int(run.limited_for * REFUSAL_LOG_PER_SECOND)
    print(f"{run.flood_counted} replays gated in the flood, {len(logged)} logged in all, {held} held back, "
          f"allowance {allowance} for {run.limited_for:.1f} s")
    assert run.flood_counted >= FLOOD * 0.9, run.counts  # the flood did reach the gate
    assert len(logged) <= allowance < run.flood_counted
    assert run.summary_while_running  # the summary came within its interval, not only at stop
    assert len(logged) + held == 1 + run.flood_counted  # every replay is either logged or summed up
