"""The provider seam: predictions (submit, get, cancel) and chat completions.

Clients raise genloom.errors.TransientError for timeouts, connection errors, 408/425/429/5xx
(with ``retry_after`` in details when the provider sent Retry-After) and PermanentError for
other 4xx and for predictions the provider reports failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

PredictionStatus = Literal["starting", "processing", "succeeded", "failed", "canceled"]
PREDICTION_TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Prediction:
    id: str
    status: PredictionStatus
    output: Any = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in PREDICTION_TERMINAL


class PredictionProvider(Protocol):
    name: str

    async def submit(
        self, model: str, input: dict[str, Any], webhook_url: str | None = None
    ) -> Prediction: ...

    async def get(self, prediction_id: str) -> Prediction: ...

    async def cancel(self, prediction_id: str) -> None: ...


class ChatProvider(Protocol):
    name: str

    async def complete(
        self, prompt: str, *, system: str | None = None, image_url: str | None = None
    ) -> str: ...
