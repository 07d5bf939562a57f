# Why: the coverage-guided fuzzer (atheris, scripts/lib/fuzz_gate.py) runs in CI too, briefly: any
# exception or non-Decision from Gate.receive on its mutated packets fails this test.
import subprocess
import sys

from tests.conftest import ROOT


def test_atheris_finds_no_crash_in_the_gate() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lib" / "fuzz_gate.py"), "-atheris_runs=300000"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 300000" in result.stderr
    lines = result.stderr.splitlines()
    coverage = [int(line.split("cov: ")[1].split()[0]) for line in lines if "cov: " in line]
    assert coverage and max(coverage) > 50  # it really explored the parser, not just the first branch
