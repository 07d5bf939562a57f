# Why: a rule a field must follow, and the words that say it was broken, exist once. The profile reader
# (profile.py, on every ssh login), the streaming clients.jsonl reader (clients_file.py, a million lines
# at start), server.toml (store.Fields), the backends and both command lines all ask these. Each is a
# small predicate or decoder, cheap enough for either path, returning a value or None (the callers add
# which file and field in their own one-line error).
import binascii

from stealth.constants import KEY_BYTES, MAX_TCP_PORT

PORTS_RULE = f"expected a non-empty list of ports 1..{MAX_TCP_PORT}"
PORT_RULE = f"must be a port 1..{MAX_TCP_PORT}"
KEY_NOT_BASE64 = "not valid base64"
KEY_LENGTH_RULE = f"must be {KEY_BYTES} bytes"


def is_port(value: object) -> bool:
    """A TCP port number: an int (not a bool) in 1..MAX_TCP_PORT."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TCP_PORT


def port_of(text: str) -> int | None:
    """The port a decimal string names, or None for anything else ("22" -> 22; "0", "x", "99999": None)."""
    if not text.isdigit() or len(text) > len(str(MAX_TCP_PORT)):
        return None
    port = int(text)
    return port if is_port(port) else None


def key_of(text: object) -> bytes | str:
    """A client key from its base64 text (strict: what base64.b64decode(..., validate=True) accepts,
    without importing base64), or the fault: KEY_NOT_BASE64 or KEY_LENGTH_RULE."""
    if not isinstance(text, str):
        return KEY_NOT_BASE64
    try:
        raw = binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):  # a non-ASCII key: UnicodeEncodeError, a ValueError
        return KEY_NOT_BASE64
    return raw if len(raw) == KEY_BYTES else KEY_LENGTH_RULE


def enrolled_twice(name: str) -> str:
    """The fault of a clients.jsonl that names one client twice."""
    return f"client {name!r} is enrolled twice"
