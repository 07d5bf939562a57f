# Why: what every click command of both command lines (`stealth server …`, `stealth client …`) shares:
# a StealthError becomes one line on stderr and exit status 1. Shared, so it imports neither side.
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from stealth.errors import StealthError

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
