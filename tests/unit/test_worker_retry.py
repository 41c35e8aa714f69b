"""How long a worker waits before it retries a failed attempt."""

from __future__ import annotations

from raystream._runtime.worker import _FIRST_BACKOFF_S, _HEALTHY_ATTEMPT_S, _retry_wait


def test_attempts_failing_at_once_keep_the_doubled_wait() -> None:
    assert _retry_wait(4.0, ran_s=1.0) == 4.0


def test_a_failure_after_a_long_healthy_attempt_waits_the_first_wait_again() -> None:
    assert _retry_wait(10.0, ran_s=_HEALTHY_ATTEMPT_S + 1) == _FIRST_BACKOFF_S
