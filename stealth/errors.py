# Why: one typed error tree. A rejected packet is a value (see core.gate.Reason); a broken invariant
# (bad config, key or state file; missing privilege) is one of these, and its str() is the one-line
# message the CLI prints. Messages name the file and the fault, never a secret. Imports nothing at run
# time: stealth-connect loads it on every ssh login.
from __future__ import annotations

TYPE_CHECKING = False  # mypy treats this name as True; typing and pathlib cost ms at start
if TYPE_CHECKING:
    import os


class StealthError(Exception):
    """Base of every error stealth reports to a user."""


class ConfigError(StealthError):
    """A config, key, profile or state file is missing, unsafe or malformed."""

    def __init__(self, path: str | os.PathLike[str], fault: str) -> None:
        self.path = str(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}")


class FirewallError(StealthError):
    """The packet-filter rules could not be installed or removed."""


class ClientError(StealthError):
    """A knock could not be made (no profile, no privilege, timeout, out of window)."""
