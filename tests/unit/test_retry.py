"""Retry policy as pure values: classification, exhaustion, jitter bounds and the Retry-After floor."""

from __future__ import annotations

import random

import pytest

from genloom.errors import InvalidInput, PermanentError, TransientError
from genloom.retry import Backoff, Decision, decide, is_transient


class ProviderTimeout(TransientError):
    code = "provider_timeout"


@pytest.mark.parametrize(
    "exc",
    [TransientError(), ProviderTimeout(), TimeoutError(), ConnectionResetError(), ConnectionError(), OSError(),
     OSError(28, "No space left on device")],
)
def test_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc", [PermanentError(), InvalidInput(), ValueError("bad"), KeyError("x"), RuntimeError(),
            FileNotFoundError(2, "gone"), PermissionError(13, "denied"), IsADirectoryError()]
)
def test_permanent(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_transient_error_is_retried_with_its_code() -> None:
    d = decide(ProviderTimeout(), attempt=1, max_attempts=3, backoff=Backoff())
    assert d.retry
    assert d.error_code == "provider_timeout"
    assert 1.0 <= d.delay <= 2.0


def test_permanent_error_fails_at_once() -> None:
    d = decide(PermanentError(), attempt=1, max_attempts=5, backoff=Backoff())
    assert d == Decision(False, 0.0, "permanent_error")


def test_unclassified_exception_fails_with_internal_error() -> None:
    assert decide(ValueError("x"), 1, 3, Backoff()) == Decision(False, 0.0, "internal_error")


def test_timeout_is_retried_with_code_timeout() -> None:
    d = decide(TimeoutError(), 1, 3, Backoff())
    assert d.retry and d.error_code == "timeout"


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
def test_exhaustion_at_max_attempts(max_attempts: int) -> None:
    for attempt in range(1, max_attempts):
        assert decide(TransientError(), attempt, max_attempts, Backoff()).retry
    last = decide(TransientError(), max_attempts, max_attempts, Backoff())
    assert last == Decision(False, 0.0, "transient_error")
    assert not decide(TransientError(), max_attempts + 1, max_attempts, Backoff()).retry


@pytest.mark.parametrize("attempt", range(0, 14))
def test_jitter_stays_within_half_ceiling_and_ceiling(attempt: int) -> None:
    b = Backoff(base=2.0, factor=2.0, cap=300.0)
    ceiling = min(300.0, 2.0 * 2.0 ** max(0, attempt - 1))
    rng = random.Random(attempt)
    delays = [b.delay(attempt, rng) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 4  # it really is jittered


def test_delay_grows_then_caps() -> None:
    b = Backoff(base=1.0, factor=3.0, cap=50.0)
    ceilings = [min(50.0, 3.0 ** (a - 1)) for a in range(1, 8)]
    for a, ceiling in zip(range(1, 8), ceilings, strict=True):
        d = b.delay(a, random.Random(0))
        assert ceiling / 2 <= d <= ceiling
    assert b.delay(40, random.Random(0)) <= 50.0


def test_same_seed_same_delay() -> None:
    b = Backoff()
    assert b.delay(4, random.Random(7)) == b.delay(4, random.Random(7))


def test_retry_after_is_a_floor() -> None:
    b = Backoff(base=2.0, factor=2.0, cap=300.0)
    for _ in range(50):
        assert b.delay(1, floor=45.0) == 45.0
    d = decide(TransientError(), 1, 3, b, retry_after=120.0)
    assert d.retry and d.delay == 120.0
    # a floor below the jitter range changes nothing
    for _ in range(50):
        assert 4.0 <= b.delay(3, floor=1.0) <= 8.0


def test_retry_after_above_the_cap_is_still_honoured() -> None:
    assert Backoff(cap=10.0).delay(9, floor=600.0) == 600.0


def test_no_retry_means_no_delay_even_with_retry_after() -> None:
    assert decide(TransientError(), 3, 3, Backoff(), retry_after=30.0).delay == 0.0


def test_backoff_and_decision_are_values() -> None:
    assert Backoff() == Backoff(2.0, 2.0, 300.0)
    with pytest.raises(AttributeError):
        Backoff().base = 1.0  # type: ignore[misc]
