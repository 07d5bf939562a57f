# Why: what every click command of both command lines (`stealth server …`, `stealth client …`) shares:
# a StealthError becomes one line on stderr and exit status 1. Shared, so it imports neither side.
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from stealth.errors import ConfigError, StealthError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Run the command; a StealthError becomes `stealth: <message>` on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StealthError as e:
            click.echo(f"stealth: {e}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def write_units(units: list[Path], directory: Path) -> None:
    """Copy shipped systemd units into `directory` (`stealth server units`, `stealth client
    agent-units`), saying each file written; ConfigError naming the file that could not be."""
    for unit in units:
        dest = directory / unit.name
        try:
            dest.write_text(unit.read_text())
        except OSError as e:
            raise ConfigError(dest, f"cannot write: {e.strerror or e}") from None
        click.echo(f"wrote {dest}")
