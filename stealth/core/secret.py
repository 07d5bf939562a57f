# Why: keys and session keys travel through dataclasses, logs and tracebacks; wrapping them keeps
# them out of every repr and str by construction, instead of by each caller's care.
from dataclasses import dataclass, field

from stealth.constants import KEY_BYTES


@dataclass(frozen=True)
class Secret:
    """Opaque secret bytes. repr and str never show the value."""

    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.value, bytes):
            raise TypeError("Secret holds bytes")

    def __repr__(self) -> str:
        return f"Secret(<{len(self.value)} bytes hidden>)"

    __str__ = __repr__


def client_key(raw: bytes) -> Secret:
    """Validate a client key: exactly KEY_BYTES random bytes."""
    if len(raw) != KEY_BYTES:
        raise ValueError(f"a client key is {KEY_BYTES} bytes, got {len(raw)}")
    return Secret(raw)
