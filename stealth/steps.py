# Why: long work runs in steps between queue polls, so packets keep their verdicts meanwhile: a
# million-client reload, moving every client's recovery tokens to a new slot, folding the last-accept
# log. Each caller advances its generator by about a budget of seconds per call; this says how, once.
import time
from collections.abc import Iterator


def run_for(steps: Iterator[None], budget_seconds: float) -> bool:
    """Advance `steps` by at least one step and for about `budget_seconds`; True once it is exhausted.
    Exceptions from the steps propagate."""
    deadline = time.monotonic() + budget_seconds
    try:
        next(steps)
        while time.monotonic() < deadline:
            next(steps)
    except StopIteration:
        return True
    return False
