# Why: keys and session keys travel through records, logs and tracebacks; wrapping them keeps them out of
# every repr and str by construction, instead of by each caller's care. A Record, not a dataclass: the
# client imports this on every ssh login (stealth/core/record.py says why).
from __future__ import annotations

from stealth.core.record import Record, set_field


class Secret(Record):
    """Opaque secret bytes. repr and str never show the value."""

    __slots__ = ("value",)
    _hidden = frozenset({"value"})
    value: bytes

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("Secret holds bytes")
        set_field(self, "value", value)

    def __repr__(self) -> str:
        return f"Secret(<{len(self.value)} bytes hidden>)"

    __str__ = __repr__
