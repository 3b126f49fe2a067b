"""The one exception tree; each class carries a stable machine-readable code and an HTTP status.

    GenloomError
    ├── InvalidInput            (400 invalid_input)
    │   ├── IdempotencyKeyReused (422 idempotency_key_reused)
    │   ├── UnsupportedMedia    (422 unsupported_media)
    │   ├── Oversize            (413 oversize)
    │   ├── BrokenUrl           (422 broken_url)
    │   └── UnsafeUrl           (422 unsafe_url)
    ├── Unauthorized            (401 unauthorized)
    ├── Forbidden               (403 forbidden)
    ├── InsufficientCredits     (402 insufficient_credits)
    ├── NotFound                (404 not_found)
    ├── InvalidTransition       (409 invalid_transition)
    │   ├── LeaseLost           (409 lease_lost)
    │   └── JobCancelled        (409 cancelled: a worker met a cancel request at a checkpoint)
    ├── RateLimited             (429 rate_limited)
    ├── Unavailable             (503 unavailable)
    └── StageError              (a pipeline stage failed; transient or permanent)
        ├── TransientError      (retried with backoff)
        └── PermanentError      (fails the job at once)

The class docstring is the default message.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GenloomError(Exception):
    """Something went wrong."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, *, code: str | None = None, **details: Any) -> None:
        self.message = message or (type(self).__doc__ or "").strip()
        if code is not None:
            self.code = code  # type: ignore[misc]  # an instance may narrow its class's code
        self.details = details
        super().__init__(self.message)


class InvalidInput(GenloomError):
    """The request is not valid."""

    code = "invalid_input"
    status = 400


class IdempotencyKeyReused(InvalidInput):
    """This idempotency key was already used with different parameters."""

    code = "idempotency_key_reused"
    status = 422


class UnsupportedMedia(InvalidInput):
    """The source media is of an unsupported type."""

    code = "unsupported_media"
    status = 422


class Oversize(InvalidInput):
    """The source is larger than the allowed limit."""

    code = "oversize"
    status = 413


class BrokenUrl(InvalidInput):
    """The source URL could not be fetched."""

    code = "broken_url"
    status = 422


class UnsafeUrl(InvalidInput):
    """The URL points at an address genloom refuses to contact."""

    code = "unsafe_url"
    status = 422


class Unauthorized(GenloomError):
    """A valid key is required."""

    code = "unauthorized"
    status = 401


class Forbidden(GenloomError):
    """This key may not do that."""

    code = "forbidden"
    status = 403


class InsufficientCredits(GenloomError):
    """Not enough credits for this job."""

    code = "insufficient_credits"
    status = 402


class NotFound(GenloomError):
    """No such resource."""

    code = "not_found"
    status = 404


class InvalidTransition(GenloomError):
    """That state change is not allowed."""

    code = "invalid_transition"
    status = 409


class LeaseLost(InvalidTransition):
    """This worker's lease on the job is no longer current; its write was refused."""

    code = "lease_lost"
    status = 409


class JobCancelled(InvalidTransition):
    """The job was cancelled; the worker stops at this checkpoint."""

    code = "cancelled"
    status = 409


class RateLimited(GenloomError):
    """Too many requests."""

    code = "rate_limited"
    status = 429


class Unavailable(GenloomError):
    """The service is temporarily unavailable."""

    code = "unavailable"
    status = 503


class TransactionConflict(Unavailable):
    """The database turned one transaction away (a deadlock, a serialization failure, a row lock
    it could not take): the same write, tried again, goes through. A batch that meets one retries
    its writes one by one instead of answering all of them with it."""


class StageError(GenloomError):
    """A pipeline stage failed."""

    code = "stage_failed"
    status = 500


class TransientError(StageError):
    """A stage failed for a reason that may pass (timeout, 5xx, reset); it will be retried."""

    code = "transient_error"


class PermanentError(StageError):
    """A stage failed for a reason retrying cannot fix (bad input, rejected content)."""

    code = "permanent_error"
