# Why: ssh starts stealth-connect on every login, so what a knock imports is on every login's critical
# path (issue 10: process start to connected socket within 35 ms here, with Python's own start at ~10 ms).
# These check behaviour, not timing: a knock loads none of the modules whose import alone costs
# milliseconds (measured with python -X importtime on the 2-core test VM: dataclasses 10.7 ms, tomllib
# 8.8, pathlib 4.6, hmac 3.7, typing 3.4, argparse ~3, hashlib 2.5, re ~1, ...), and the cheap stand-ins
# (records, flat_toml, the fast command line) behave as what they replace.
import ast
import contextlib
import copy
import hashlib
import hmac
import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stealth_connect import cli
from stealth_connect.connect import Attempt, Settled
from stealth_connect.counter import CounterState

from stealth.core.record import FrozenInstanceError, Record, set_field
from stealth.core.secret import Secret
from stealth.core.token import Binding, Knock, PortRange, derive
from stealth.profile import Profile
from stealth.store import write_toml
from tests.conftest import ROOT, scaled

KNOCK_MODULES = ("stealth_connect.cli", "stealth_connect.connect", "stealth_connect.relay",
                 "stealth_connect.profiles", "stealth_connect.synsource", "stealth_connect.counter",
                 "stealth_connect.seal")
FORBIDDEN = ("dataclasses", "typing", "pathlib", "tomllib", "argparse", "json", "ipaddress", "re", "click",
             "tomli_w", "hashlib", "hmac", "inspect", "ast", "urllib", "datetime", "string", "encodings.idna",
             "stringprep", "unicodedata")


def loaded(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running `code` (which may not print). Without site
    (-S): this venv's editable install loads pathlib, re and ipaddress at start, which an installed
    client does not; the checkout is on PYTHONPATH instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "client")])
    listing = "import sys\nprint(sorted(sys.modules))"
    run = subprocess.run([sys.executable, "-S", "-c", f"{code}\n{listing}"], capture_output=True, text=True,
                         check=False, timeout=60, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return set(ast.literal_eval(run.stdout.splitlines()[-1]))


@pytest.fixture(scope="module")
def at_start() -> set[str]:
    """What the interpreter's own start already loaded."""
    return loaded("pass")


def forbidden(modules: set[str], at_start: set[str]) -> list[str]:
    return sorted(m for m in modules - at_start if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_importing_what_a_knock_imports_loads_nothing_expensive(at_start: set[str]) -> None:
    modules = loaded("\n".join(f"import {m}" for m in KNOCK_MODULES))
    assert set(KNOCK_MODULES) <= modules
    assert forbidden(modules, at_start) == []


def test_a_whole_run_up_to_the_knock_loads_nothing_expensive(tmp_path: Path, at_start: set[str]) -> None:
    """stealth-connect's main() with an imported profile: command line, state directory, profile, counter
    file, name resolution; the SYN source is where this run stops (it would need privilege or the agent)."""
    state = tmp_path / "state"
    (state / "hosts").mkdir(parents=True)
    profile = Profile("alice", "srv", Secret(bytes(range(32))), (22, 2222), sealed=(22,))
    write_toml(state / "hosts" / "127.0.0.1.toml", profile.to_doc())
    code = textwrap.dedent(f"""
        import stealth_connect.synsource as synsource
        from stealth.errors import ClientError

        def no_source():
            raise ClientError("stopped before the knock")

        synsource.open_syn_source = no_source
        import stealth_connect.connect
        stealth_connect.connect.open_syn_source = no_source
        from stealth_connect.cli import main
        assert main(["--state-dir", {str(state)!r}, "--name", "127.0.0.1", "127.0.0.1", "22"]) == 1
    """)
    modules = loaded(code)
    assert "stealth_connect.profiles" in modules and "stealth.profile" in modules
    assert forbidden(modules, at_start) == []


@settings(max_examples=scaled(500))
@given(st.lists(st.sampled_from(["a", "B", "0", "-", ".", "..", "x" * 63, "y" * 64, "é", "\x00", ""]),
                max_size=6).map("".join))
def test_host_names_reach_getaddrinfo_as_its_idna_codec_makes_them(host: str) -> None:
    from stealth_connect.connect import _idna_free

    given_as = _idna_free(host)
    try:
        encoded = host.encode("idna")
    except UnicodeError:
        assert given_as == host  # the codec raises, as it did
        return
    assert given_as in (host, encoded)
    assert isinstance(given_as, bytes) or not host.isascii()


def test_the_stand_ins_are_the_standard_library_s_own_functions() -> None:
    from stealth_connect import seal

    from stealth.core import token

    assert vars(token)["blake2b"] is hashlib.blake2b
    compare = vars(seal)["compare_digest"]
    assert compare(b"a" * 16, b"a" * 16) and not compare(b"a" * 16, b"b" * 16)
    assert compare is hmac.compare_digest or compare.__name__ == "_compare_digest"


# --- records: what the dataclasses they replace did ---------------------------------------------------


def test_records_are_frozen_comparable_hashable_and_copyable() -> None:
    key = Secret(bytes(range(32)))
    knock = derive(key, Binding("s"), 22, 7)
    profile = Profile("alice", "s", key, (22,))
    from stealth_connect.counter import _Current, _Slot
    from stealth_connect.profiles import Entry

    records = (key, Binding("s"), PortRange(), knock, profile, CounterState(3, 2), Settled(None, "busy"),
               _Slot(1, 2, 3), _Current(CounterState(3, 2), 1, 0, False), Entry("h", "a", (22,), (), 5))
    for rec in records:
        name = rec._fields[0]
        with pytest.raises(FrozenInstanceError):
            setattr(rec, name, 1)
        with pytest.raises(AttributeError):
            delattr(rec, name)
        assert rec == copy.copy(rec) == copy.deepcopy(rec) == pickle.loads(pickle.dumps(rec))  # noqa: S301
        assert hash(rec) == hash(copy.deepcopy(rec))
    assert Binding("s") == Binding("s", True, PortRange(), None) != Binding("t")
    assert CounterState(3, 2) == CounterState(last_used=3, last_ok=2, pending=0, pending_since=0.0)
    assert CounterState(3, 2) != (3, 2, 0, 0.0) and CounterState(3, 2) != Settled(None, "busy")
    assert {Secret(b"x"), Secret(b"x")} == {Secret(b"x")}
    assert repr(CounterState(3, 2)) == "CounterState(last_used=3, last_ok=2, pending=0, pending_since=0.0)"
    assert repr(PortRange()) == "PortRange(low=32768, high=60999, step=2)"
    assert repr(Attempt(None, knock, "new")).startswith("Attempt(sock=None, knock=Knock(counter=7, ")  # type: ignore[arg-type]


def test_records_never_show_a_key() -> None:
    key = Secret(bytes(range(32)))
    knock = derive(key, Binding("s"), 22, 7)
    shown = [repr(key), str(key), repr(knock), str(knock), repr(Profile("a", "s", key, (22,)))]
    assert repr(knock) == f"Knock(counter=7, dport=22, isn={knock.isn}, sport={knock.sport})"
    for text in shown:
        for secret in (key.value, knock.session_key.value):
            assert secret.hex() not in text and repr(secret) not in text, text


def test_records_validate_as_before() -> None:
    with pytest.raises(TypeError):
        Secret("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="source-port range"):
        PortRange(2, 1)
    with pytest.raises(ValueError, match="server id"):
        Binding("")
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        Binding("s", source=b"123")
    assert Knock(1, 22, 3, None, Secret(b"")).sport is None


def test_a_record_must_declare_its_fields_as_slots() -> None:
    with pytest.raises(TypeError, match="__slots__"):

        class Wrong(Record):
            __slots__ = ("a",)
            a: int
            b: int

    class Right(Record):
        __slots__ = ("a", "b")
        a: int
        b: int

        def __init__(self, a: int, b: int) -> None:
            set_field(self, "a", a)
            set_field(self, "b", b)

    assert Right(1, 2)._fields == ("a", "b") and not hasattr(Right(1, 2), "__dict__")


# --- the command line: the fast parser says what argparse says, or leaves it to argparse ---------------

TOKENS = ["h", "22", "host.example", "10.0.0.1", "::1", "-4", "-6", "--fdpass", "--name", "--name=x",
          "--name=", "--name=-x", "--profile", "p.toml", "--profile=", "--state-dir", "/s", "--timeout",
          "2.5", "--timeout=0", "--timeout=-1", "nan", "inf", "--retries", "3", "--retries=x", "-h", "--help",
          "--version", "--", "-", "", "-22", "x=y", "--fd", "--na", "--time", " 22", "٢٢", "0x16", "65536",
          "-4=1", "--fdpass=1", "--nam", "-46", "-a b", "a b"]


def argparse_says(argv: list[str]) -> cli.Options | None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            return cli.Options(**vars(cli.parser().parse_args(argv)))
        except SystemExit:
            return None


safe = st.text(max_size=4).filter(lambda s: not s.startswith("-"))
integers = st.integers(0, 70000).map(str)
option = st.one_of(
    st.sampled_from([["--fdpass"], ["-4"], ["-6"]]),
    st.tuples(st.sampled_from(["--name", "--profile", "--state-dir"]), safe).map(list),
    st.tuples(st.sampled_from(["--timeout", "--retries"]), integers | st.floats().map(str)).map(list),
    st.tuples(st.sampled_from(["--name=", "--profile=", "--timeout=", "--retries="]), integers).map(
        lambda t: ["".join(t)]),
)


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """Well-formed ones (options in any order, HOST and PORT anywhere between them), and now and then
    one word replaced by, or one word added from, TOKENS."""
    parts = draw(st.lists(option, max_size=4))
    host_at = draw(st.integers(0, len(parts)))
    parts.insert(host_at, [draw(safe)])
    parts.insert(draw(st.integers(host_at + 1, len(parts))), [draw(integers)])
    argv = [word for part in parts for word in part]
    if draw(st.booleans()):
        at, token = draw(st.integers(0, len(argv))), draw(st.sampled_from(TOKENS))
        argv[at : at + draw(st.integers(0, 1))] = [token]
    return argv


@settings(max_examples=scaled(1500))
@given(st.one_of(st.lists(st.sampled_from(TOKENS), max_size=7), command_lines()))
def test_the_fast_parser_agrees_with_argparse(argv: list[str]) -> None:
    fast = cli.parse_fast(argv)
    if fast is not None:
        assert repr(fast) == repr(argparse_says(argv)), argv  # repr: nan == nan


@pytest.mark.parametrize("argv", [
    ["h", "22"], ["--name", "alias", "10.0.0.1", "22"], ["--fdpass", "--name", "a", "h", "22"],
    ["--state-dir", "/s", "--profile", "p.toml", "-4", "h", "22"], ["-6", "--timeout", "2.5", "h", "22"],
    ["h", "22", "--retries", "3"], ["--name=a", "--timeout=3", "h", "22"],
])
def test_what_ssh_runs_takes_the_fast_path(argv: list[str]) -> None:
    assert cli.parse_fast(argv) is not None
    assert cli.parse_fast(argv) == argparse_says(argv)


def test_help_and_version_are_argparse_s(capsys: pytest.CaptureFixture[str]) -> None:
    from stealth import __version__

    for argv in (["-h"], ["--help"], ["--version"], ["h"], ["h", "x"], ["--fd", "h", "22"]):
        assert cli.parse_fast(argv) is None
    with pytest.raises(SystemExit) as exited:
        cli.main(["-h"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "%h %p" in out and "(ssh's %h)" in out and "%%" not in out and "--retries" not in out
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"stealth-connect {__version__}"
    with pytest.raises(SystemExit) as exited:
        cli.main(["h", "x"])
    assert exited.value.code == 2 and "invalid int value: 'x'" in capsys.readouterr().err
