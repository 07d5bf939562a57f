# Why: stealth-connect reads its profile with stealth.store.flat_toml, not tomllib (whose import costs
# ~9 ms of every ssh login). That is only safe if the two never disagree: on every profile Profile.to_doc()
# can produce, rendered by tomli_w, flat_toml must give tomllib's table (and take the fast path for
# ordinary ones); on any other text it must give tomllib's table or step aside (None), so read_toml
# returns what tomllib returns and reports tomllib's error for a broken hand-edited file.
import string
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from stealth.core.secret import Secret
from stealth.core.token import PortRange
from stealth.errors import ConfigError
from stealth.profile import Profile
from stealth.store import flat_toml, read_toml
from tests.conftest import scaled

FAST = settings(max_examples=scaled(300), suppress_health_check=[HealthCheck.too_slow])
BARE = string.ascii_letters + string.digits + "-_"


def typed(value: Any) -> Any:
    """`value` with every leaf's type beside it, so True and 1 (or 1 and 1.0) never compare equal."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value), value)


def agrees(text: str) -> dict[str, Any] | None:
    """Check flat_toml against tomllib on `text`; flat_toml's answer."""
    ours = flat_toml(text)
    if ours is None:
        return None
    assert typed(ours) == typed(tomllib.loads(text)), text  # tomllib raising here fails the test too
    return ours


# --- every profile to_doc() can produce ----------------------------------------------------------------

ports = st.lists(st.integers(1, 65535), min_size=1, max_size=20)
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
server_ids = st.text(min_size=1, max_size=80).filter(lambda s: len(s.encode()) <= 255)


any_names = st.text(max_size=40)


@st.composite
def profiles(draw: st.DrawFn, names: st.SearchStrategy[str] = any_names,
             sids: st.SearchStrategy[str] = server_ids) -> Profile:
    covered = tuple(sorted(set(draw(ports))))
    low = draw(st.integers(1, 65535))
    return Profile(
        name=draw(names), server_id=draw(sids), key=Secret(draw(st.binary(min_size=32, max_size=32))),
        ports=covered, window=draw(st.integers(1, 1024)), port_bits=draw(st.booleans()),
        port_range=PortRange(low, draw(st.integers(low, 65535)), draw(st.integers(1, 2))),
        bind_source=draw(st.none() | addresses),
        sealed=tuple(sorted(set(draw(st.lists(st.sampled_from(covered), max_size=len(covered)))))),
    )


@FAST
@given(profiles())
def test_every_profile_reads_back_as_tomllib_reads_it(profile: Profile) -> None:
    agrees(tomli_w.dumps(profile.to_doc()))


plain_text = st.text(st.characters(codec="utf-8", categories=["L", "N", "P", "S"], exclude_characters='"\\'),
                     max_size=40)


@FAST
@given(profile=profiles(names=plain_text, sids=plain_text.filter(lambda s: 0 < len(s.encode()) <= 255)))
def test_ordinary_profiles_take_the_fast_path(profile: Profile, tmp_path_factory: pytest.TempPathFactory
                                              ) -> None:
    text = tomli_w.dumps(profile.to_doc())
    assert agrees(text) == profile.to_doc()
    path = tmp_path_factory.mktemp("p") / "p.toml"
    path.write_text(text)
    assert Profile.from_doc(path, read_toml(path)) == profile


def test_a_profile_as_the_server_writes_it(tmp_path: Path) -> None:
    profile = Profile("alice@laptop", "myhost", Secret(bytes(range(32))), tuple(range(20, 36)), sealed=(22,))
    text = tomli_w.dumps(profile.to_doc())
    assert "ports = [\n    20,\n" in text  # tomli_w's arrays span lines
    assert flat_toml(text) == profile.to_doc()


# --- any flat document tomli_w renders ---------------------------------------------------------------

scalars = st.one_of(st.text(max_size=20), st.integers(), st.booleans(),
                    st.integers(-(10**40), 10**40), st.floats(allow_nan=False))
values = st.one_of(scalars, st.lists(st.integers(), max_size=8), st.lists(scalars, max_size=4),
                   st.lists(st.lists(st.integers(), max_size=3), max_size=3),
                   st.dictionaries(st.text(BARE, min_size=1, max_size=5), st.integers(), max_size=3))
docs = st.dictionaries(st.text(max_size=8).filter(bool), values, max_size=8)


@FAST
@given(docs)
def test_tomli_w_documents_read_as_tomllib_reads_them(doc: dict[str, Any]) -> None:
    try:
        text = tomli_w.dumps(doc)
        text.encode()
    except (ValueError, UnicodeEncodeError):  # not TOML (nan, surrogates): no file holds it
        return
    agrees(text)


@FAST
@given(st.dictionaries(st.text(BARE, min_size=1, max_size=8),
                       st.one_of(st.text(st.characters(codec="ascii", min_codepoint=32, max_codepoint=126,
                                                       exclude_characters='"\\'), max_size=12),
                                 st.integers(-(10**18) + 1, 10**18 - 1), st.booleans(),
                                 st.lists(st.integers(-(10**18) + 1, 10**18 - 1), max_size=30)),
                       max_size=10))
def test_flat_documents_take_the_fast_path(doc: dict[str, Any]) -> None:
    assert agrees(tomli_w.dumps(doc)) == doc


# --- anything else: tomllib's table, or None (then tomllib decides) ----------------------------------

FRAGMENTS = [
    "a", "key", "ports", "-", "_", "1", "0", "00", "-0", "+1", "1_000", "1.5", "1e3", "0x10", "inf", "nan",
    "true", "false", "True", " ", "  ", "\t", "=", " = ", "==", '"', '""', '"""', "'", "'''", "\\", "\\n",
    "\\u0041", "\\x", "[", "]", "[[", "]]", "[a]", "{", "}", "{ a = 1 }", ",", ", ", ".", "a.b", '"a"',
    "#", "# c", "\n", "\r\n", "\r", "\x00", "\x7f", "\x1f", "\ufeff", "\u00a0", "\u2028", "é", "日本",
    "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z", "9" * 25,
]
texts = st.lists(st.sampled_from(FRAGMENTS), max_size=30).map("".join)
lines = st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=8).map("".join), max_size=8).map("\n".join)
# near misses: `key = value` lines whose every part is usually right and sometimes one of the fragments
blank = st.sampled_from(["", " ", "\t", "  \t"])
keys = st.one_of(st.text(BARE, min_size=1, max_size=6), st.sampled_from(FRAGMENTS))
ints = st.one_of(st.integers(-(10**19), 10**19).map(str),
                 st.sampled_from(["0", "-0", "01", "+1", "1_0", "1.0"]))
strings = st.text(max_size=6).map(lambda s: f'"{s}"')
arrays = st.tuples(st.lists(st.one_of(ints, st.sampled_from(FRAGMENTS)), max_size=4), st.sampled_from(
    [", ", ",", ",\n    ", "\n", " ,\n"]), st.booleans(), st.sampled_from(["", "\n", "\n    "])).map(
    lambda a: "[" + a[3] + a[1].join(a[0]) + (a[1] if a[2] else "") + a[3] + "]")
values_text = st.one_of(ints, strings, st.sampled_from(["true", "false"]), arrays, st.sampled_from(FRAGMENTS))
assignments = st.tuples(blank, keys, blank, st.sampled_from(["=", "=", "=", ":", "=="]), blank, values_text,
                        blank, st.sampled_from(["", "", "", " # c", "#"])).map("".join)
near = st.lists(st.one_of(assignments, assignments, blank, st.sampled_from(["# c", "#", "[t]", "\r"])),
                max_size=8).map("\n".join)


@settings(max_examples=scaled(3000))
@given(st.one_of(texts, lines, near, near))
@example("a = 1\na = 2")
@example("ports = [\n    22,\n    # c\n]")
@example("ports = [\n    22\n    23,\n]")
@example("a = [1,,2]")
@example("a = [,]")
@example("a = [ ]")
@example("a = [\n]\n")
@example("a = 1 # c")
@example('a = "x" # c')
@example('a = "x"\r\n')
@example("a = -0")
@example("a = 0\n\n# c\n\tb\t=\ttrue\t")
@example("a = [1, [2]]")
@example("a = [\n1,\n2]]\n")
@example('a = "\t"')
@example("a = 1\n[t]\nb = 2")
def test_any_other_text_reads_as_tomllib_reads_it_or_goes_to_tomllib(text: str) -> None:
    ours = flat_toml(text)
    if ours is None:
        return
    assert typed(ours) == typed(tomllib.loads(text)), repr(text)


@pytest.mark.parametrize("text", [
    "a = 1\na = 2\n",  # duplicate key
    "a = [1,,2]\n",
    'a = "x\n',  # unterminated string
    "a = 1 2\n",
    "[t\n",
    "a = 01\n",
    "a = \x00\n",
])
def test_read_toml_reports_tomllib_s_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(text.encode())
    with pytest.raises(tomllib.TOMLDecodeError) as expected:
        tomllib.loads(text)
    with pytest.raises(ConfigError) as got:
        read_toml(path)
    assert str(got.value) == f"{path}: invalid TOML: {expected.value}"


def test_read_toml_reads_the_rest_of_toml_with_tomllib(tmp_path: Path) -> None:
    text = 'format = "x"  # a comment\n[backends]\n22 = "127.0.0.1:22"\nname = "a\\u00e9"\n'
    path = tmp_path / "p.toml"
    path.write_text(text)
    assert flat_toml(text) is None
    assert read_toml(path) == tomllib.loads(text)
