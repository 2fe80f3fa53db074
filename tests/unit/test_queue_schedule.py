"""The retry schedule: anchors, jitter bounds, expiry, the delay notice."""

from __future__ import annotations

import random

import pytest

from correo.config import QueueSettings
from correo.queue import schedule


def test_default_anchors_then_every_four_hours() -> None:
    waits = [schedule.retry_delay(n, jitter=0) for n in range(1, 10)]
    assert waits == [300, 600, 1200, 2400, 3600, 7200, 14400, 14400, 14400]


@pytest.mark.parametrize("attempt", [1, 4, 7, 20])
def test_jitter_stays_within_bounds_and_varies(attempt: int) -> None:
    rng = random.Random(1)
    base = schedule.retry_delay(attempt, jitter=0)
    got = {schedule.retry_delay(attempt, jitter=0.1, rng=rng) for _ in range(200)}
    assert all(base * 0.9 <= g <= base * 1.1 for g in got)
    assert len(got) > 100


def test_expiry_caps_the_last_retry_and_then_gives_up() -> None:
    s = QueueSettings(retry_intervals=(3600,), expire_after=5000, jitter=0)
    assert schedule.next_attempt(100, 0, 1, s) == 3700
    assert schedule.next_attempt(3700, 0, 2, s) == 5000  # tried once more at the deadline
    assert schedule.next_attempt(5000, 0, 3, s) is None


def test_delay_warning() -> None:
    s = QueueSettings(delay_warning_after=3600)
    assert not schedule.delay_warning_due(3599, 0, s)
    assert schedule.delay_warning_due(3600, 0, s)
    assert not schedule.delay_warning_due(10**6, 0, QueueSettings(delay_warning_after=0))
