# Why: recorded real kernel traffic (scripts/record-captures: stealth-connect knocks, replays, wrong keys
# and ports, a revoked client, nmap, hping3, crafted malformed frames) must get, packet by packet, the
# verdict and reason the recorder derived from what it sent. The real `stealth inspect` CLI runs on a copy
# of the committed server state, and must leave that copy byte-identical: inspect changes no state.
# Unprivileged: these tests only read files.
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CAPTURES = Path(__file__).resolve().parent.parent / "captures"
MANIFEST = CAPTURES / "manifest.json"
STEALTH = Path(sys.executable).parent / "stealth"
REQUIRED_COVERAGE = {"valid", "replay", "wrong_key", "wrong_port", "revoked", "nmap", "hping3", "malformed"}


def load_manifest() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(MANIFEST.read_text())
    return doc


def capture_names() -> list[str]:
    return sorted(load_manifest()["captures"])


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def private_copy(state: Path, dest: Path) -> Path:
    """The committed state, copied with the modes the server insists on (git keeps no 0600)."""
    shutil.copytree(state, dest)
    dest.chmod(0o700)
    for p in dest.iterdir():
        p.chmod(0o600)
    return dest


def test_manifest_covers_every_required_kind() -> None:
    captures = load_manifest()["captures"]
    covered = {kind for cap in captures.values() for kind in cap["covers"]}
    assert REQUIRED_COVERAGE <= covered, REQUIRED_COVERAGE - covered
    for name, cap in captures.items():
        assert (CAPTURES / name).is_file(), name
        assert (CAPTURES / cap["state"] / "clients.jsonl").is_file(), cap["state"]
        judged = [row for row in cap["packets"] if row["verdict"] != "ignore"]
        assert judged, f"{name} has no packet inbound to a protected port"


def test_manifest_expects_both_verdicts_and_the_key_reasons() -> None:
    reasons = {
        (row["verdict"], row["reason"])
        for cap in load_manifest()["captures"].values()
        for row in cap["packets"]
        if row["verdict"] != "ignore"
    }
    for expected in [("accept", "valid"), ("drop", "replay"),
                     ("drop", "unknown_token"), ("drop", "not_syn"), ("drop", "malformed"),
                     ("drop", "fragment"), ("drop", "ipv6_extension"), ("drop", "bad_checksum"),
                     ("drop", "syn_with_data"), ("drop", "wrong_source")]:
        assert expected in reasons, expected


@pytest.mark.parametrize("name", capture_names())
def test_inspect_gives_the_expected_verdicts(name: str, tmp_path: Path) -> None:
    cap = load_manifest()["captures"][name]
    committed = CAPTURES / cap["state"]
    committed_before = snapshot(committed)
    state = private_copy(committed, tmp_path / "state")
    before = snapshot(state)

    result = subprocess.run(
        [str(STEALTH), "inspect", str(CAPTURES / name), "--state-dir", str(state), "--json"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]

    assert [r["index"] for r in rows] == [e["index"] for e in cap["packets"]]
    wrong = [
        f"#{got['index']} {got['flow']}: got {got['verdict']}/{got['reason']}, "
        f"expected {want['verdict']}/{want['reason']} ({want['what']})"
        for got, want in zip(rows, cap["packets"], strict=True)
        if want["verdict"] != "ignore"
        and (got["verdict"], got["reason"]) != (want["verdict"], want["reason"])
    ]
    assert not wrong, "\n".join(wrong)
    accepted_clients = {r["client"] for r in rows if r["verdict"] == "accept"}
    assert None not in accepted_clients

    assert snapshot(state) == before, "inspect wrote to the state directory"
    assert snapshot(committed) == committed_before
