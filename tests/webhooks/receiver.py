"""A webhook receiver over real HTTP (uvicorn in a thread, via genloom.testing.StandIn) whose
answers are scripted per request: status, Retry-After and a delay before answering."""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from genloom.testing import Recorded, StandIn


@dataclass(frozen=True)
class Answer:
    status: int = 204
    delay: float = 0.0
    retry_after: str | None = None


@dataclass(frozen=True)
class Arrival:
    request: Recorded
    at: float  # time.monotonic() when the request arrived

    @property
    def webhook_id(self) -> str:
        return self.request.headers["webhook-id"]

    def body(self) -> Any:
        return json.loads(self.request.content)


class Receiver(StandIn):
    """Answers the scripted ``Answer``s in turn, then ``default``; records every request."""

    def __init__(self, default: Answer | None = None) -> None:
        super().__init__()
        self.default = default or Answer()
        self.script: deque[Answer] = deque()
        self.arrivals: list[Arrival] = []

    def answer(self, *answers: Answer) -> None:
        with self._cond:
            self.script.extend(answers)

    def set_default(self, answer: Answer) -> None:
        with self._cond:
            self.default = answer

    def got(self) -> list[Arrival]:
        with self._cond:
            return list(self.arrivals)

    def count(self, route: str = "hook") -> int:
        with self._cond:
            return len(self.arrivals)

    async def wait_for(self, n: int, within: float = 10.0) -> list[Arrival]:
        assert await self.wait_until_async(lambda: len(self.arrivals) >= n, within), (
            f"received {len(self.arrivals)} of {n} webhooks within {within} s")
        return self.got()

    def _routes(self) -> list[Route]:
        return [Route("/{path:path}", self._receive, methods=["POST"])]

    async def _receive(self, request: Request) -> Response:
        content = await request.body()
        at = time.monotonic()
        with self._cond:
            recorded = Recorded("hook", request.method, request.url.path, dict(request.headers), content)
            self.requests.append(recorded)
            self.arrivals.append(Arrival(recorded, at))
            answer = self.script.popleft() if self.script else self.default
            self._cond.notify_all()
        await self._pause(answer.delay)
        headers = {"Retry-After": answer.retry_after} if answer.retry_after is not None else None
        return Response(b"scripted" if answer.status >= 300 else b"", answer.status, headers=headers)
