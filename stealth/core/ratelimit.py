# Why: a refused knock of a known client's token is logged with its source (for fail2ban), but a flood of
# replayed SYNs must not fill the disk. LogLimiter is a token bucket per key (the refusal's reason): up to
# `burst` lines at once, then `rate` lines a second; what it holds back is counted, and summary() hands
# out those counts at most once per `interval`. Pure: the caller passes the time in (monotonic seconds).
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float  # when `tokens` was last brought up to date


class LogLimiter:
    """Token buckets per key, plus the count of what each held back since the last summary."""

    def __init__(self, rate: float, burst: int, interval: float) -> None:
        if rate <= 0 or burst < 1 or interval <= 0:
            raise ValueError("rate and interval must be positive, burst at least 1")
        self.rate = rate
        self.burst = burst
        self.interval = interval
        self._buckets: dict[str, _Bucket] = {}
        self.suppressed: dict[str, int] = {}
        self._first_suppressed: float | None = None  # when the current summary interval began

    def allow(self, key: str, now: float) -> bool:
        """True if a line for `key` may be written at `now`; False (and counted) if it is held back."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        elif now > bucket.at:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        self.suppressed[key] = self.suppressed.get(key, 0) + 1
        if self._first_suppressed is None:
            self._first_suppressed = now
        return False

    def summary(self, now: float, final: bool = False) -> dict[str, int] | None:
        """The counts held back since the last summary, once `interval` has passed since the first of them
        (or at once with `final`, when the caller stops), and then zero again; None when nothing is due."""
        start = self._first_suppressed
        if start is None or (not final and now - start < self.interval):
            return None
        out, self.suppressed, self._first_suppressed = self.suppressed, {}, None
        return dict(sorted(out.items()))

    def allowance(self, seconds: float) -> int:
        """The most lines one key can get through in `seconds` (burst plus the refill)."""
        return self.burst + int(seconds * self.rate)
