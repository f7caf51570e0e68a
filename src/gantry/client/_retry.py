"""Retry policy: pure. Which errors to retry, and how long to wait before the next try.

The wait honours the server's ``Retry-After`` (never less, capped by ``max_wait_s``);
otherwise it is exponential backoff with full jitter (a random wait in
``[0, min(cap, base * 2**attempt)]``), so clients that failed together do not come back
together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gantry.client._errors import ClientSDKError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4  # tries in all, the first included
    base_s: float = 0.25
    cap_s: float = 8.0
    max_wait_s: float = 60.0  # a longer Retry-After is not waited for: the error is raised

    def delay(self, attempt: int, error: ClientSDKError, rng: random.Random) -> float | None:
        """Seconds to wait before try ``attempt + 1`` after ``error`` on try ``attempt``
        (1-based), or None to give up and raise ``error``."""
        if not error.retryable or attempt >= self.max_attempts:
            return None
        backoff = rng.uniform(0.0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        if error.retry_after is None:
            return backoff
        if error.retry_after > self.max_wait_s:
            return None
        # jitter on top of the server's wait spreads a crowd told the same second
        return error.retry_after + rng.uniform(0.0, min(self.base_s, error.retry_after * 0.1))


NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if now is None:
        import time

        now = time.time()
    return max(0.0, when.timestamp() - now)


__all__ = ["NO_RETRY", "RetryPolicy", "parse_retry_after"]
