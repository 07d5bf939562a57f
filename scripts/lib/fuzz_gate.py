# Why: coverage-guided fuzzing of the packet path with atheris (libFuzzer for Python), beside the
# hypothesis properties: any bytes given to Gate.receive must yield a Decision, DROP unless they are a
# valid token SYN, and never an exception. Seeds are real SYN shapes so the fuzzer starts deep.
# Run: .venv/bin/python scripts/lib/fuzz_gate.py -atheris_runs=200000
import shutil
import struct
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from stealth.core.gate import Gate, Verdict
    from stealth.core.packet import internet_checksum
    from stealth.core.secret import Secret
    from stealth.core.table import ClientSpec, TokenTable
    from stealth.core.token import Binding, derive

KEY = Secret(bytes(range(32)))
BINDING = Binding("fuzz")
SRC, DST = bytes([198, 51, 100, 2]), bytes([198, 51, 100, 1])


def syn(isn: int, sport: int) -> bytes:
    opts = bytes([2, 4, 5, 180, 4, 2, 8, 10]) + struct.pack("!II", 7, 0) + bytes([1, 3, 3, 7])
    tcp = struct.pack("!HHIIBBHHH", sport, 22, isn, 0, (20 + len(opts)) // 4 << 4, 2, 64240, 0, 0) + opts
    csum = internet_checksum(SRC + DST + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, SRC, DST)
    return ip + tcp


def new_gate() -> Gate:
    table = TokenTable(16)
    table.add(ClientSpec("fuzz", KEY, BINDING, (22,)), 0)
    return Gate(table)


GATE = new_gate()


def one_input(data: bytes) -> None:
    decision = GATE.receive(data, 0.0)
    if decision.verdict is not Verdict.DROP:
        assert decision.verdict is Verdict.ACCEPT and decision.client == "fuzz", decision


def main() -> None:
    knock = derive(KEY, BINDING, 22, 1)
    assert knock.sport is not None
    seed = syn(knock.isn, knock.sport)
    assert new_gate().receive(seed, 0.0).verdict is Verdict.ACCEPT  # the seed reaches the deepest path
    corpus = Path(tempfile.mkdtemp(prefix="stealth-fuzz-"))
    try:
        (corpus / "valid-syn").write_bytes(seed)
        (corpus / "other-syn").write_bytes(syn(12345, 40000))
        atheris.Setup([*sys.argv, "-seed=1", "-max_len=256", str(corpus)], one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(corpus, ignore_errors=True)


if __name__ == "__main__":
    main()
