"""When to try a deferred recipient again, and when to give up.

The retry schedule (``[queue] retry_intervals``, defaults below) is the delay after
each failed attempt: after attempt 1 wait 5 minutes, after attempt 2 wait 10 minutes,
…, then the last interval (4 hours) for every later attempt, until the message is
``expire_after`` old (default 5 days, RFC 5321 §4.5.4.1 asks for at least 4-5 days);
a recipient still deferred then fails with 4.4.7 and its sender gets a bounce. A single
delay notice goes out once a recipient has waited ``delay_warning_after`` (4 hours).

Each delay is stretched or shrunk by up to ``jitter`` (10 %) at random so that messages
deferred together by one outage do not all come back in the same second.

======== ======= ================================
attempt  wait    elapsed since first try (about)
======== ======= ================================
1        5m      5m
2        10m     15m
3        20m     35m
4        40m     1h15m
5        1h      2h15m
6        2h      4h15m
7+       4h      every 4h until 5 days
======== ======= ================================
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from correo.config import QueueSettings

DEFAULT_INTERVALS: tuple[float, ...] = QueueSettings().retry_intervals


def retry_delay(
    attempts: int,
    intervals: Sequence[float] = DEFAULT_INTERVALS,
    jitter: float = 0.1,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
    if not intervals:
        raise ValueError("the retry schedule needs at least one interval")
    base = intervals[min(max(attempts, 1), len(intervals)) - 1]
    if jitter <= 0:
        return base
    spread = (rng or random).uniform(-jitter, jitter)
    return max(0.0, base * (1.0 + spread))


def next_attempt(
    now: float,
    created: float,
    attempts: int,
    settings: QueueSettings,
    rng: random.Random | None = None,
) -> float | None:
    """When to retry after ``attempts`` failures, or None when the message has expired.

    The last retry is pulled in to the expiry time itself, so a message is tried once
    more at the deadline rather than failing with time still left.
    """
    deadline = created + settings.expire_after
    if now >= deadline:
        return None
    when = now + retry_delay(attempts, settings.retry_intervals, settings.jitter, rng)
    return min(when, deadline)


def delay_warning_due(now: float, created: float, settings: QueueSettings) -> bool:
    """True once a message has waited long enough for its one delay notice."""
    return settings.delay_warning_after > 0 and now - created >= settings.delay_warning_after
