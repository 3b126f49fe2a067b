"""Retry policy as pure values: classification and exponential backoff with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

from genloom.errors import GenloomError, PermanentError, TransientError

TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_transient(exc: BaseException) -> bool:
    """Timeouts, connection resets and 5xx are transient; anything genloom classified is kept. Of
    other OS errors, a missing file or a refused permission will not mend by waiting (a retry only
    delays the failure); a full disk or an I/O hiccup may."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (PermanentError, GenloomError)):
        return False
    if isinstance(exc, _LASTING_OS_ERRORS):
        return False
    return isinstance(exc, (TimeoutError, ConnectionError, OSError))


_LASTING_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass(frozen=True)
class Backoff:
    base: float = 2.0
    factor: float = 2.0
    cap: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None, floor: float = 0.0) -> float:
        """Seconds to wait before attempt ``attempt + 1``: full jitter in [ceiling/2, ceiling],
        never less than ``floor`` (a provider's Retry-After)."""
        ceiling = min(self.cap, self.base * self.factor ** max(0, attempt - 1))
        r = (rng or random).uniform(ceiling / 2, ceiling)
        return max(r, floor)


@dataclass(frozen=True)
class Decision:
    retry: bool
    delay: float
    error_code: str


def decide(
    exc: BaseException, attempt: int, max_attempts: int, backoff: Backoff, retry_after: float = 0.0
) -> Decision:
    """Whether a failed attempt is retried, after how long, and with which error code."""
    code = getattr(exc, "code", None) or ("timeout" if isinstance(exc, TimeoutError) else "internal_error")
    if is_transient(exc) and attempt < max_attempts:
        return Decision(True, backoff.delay(attempt, floor=retry_after), code)
    return Decision(False, 0.0, code)
