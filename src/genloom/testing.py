"""Stand-in provider servers for users' tests and ours: the real protocols over real HTTP.

Each stand-in is a Starlette app served by uvicorn on 127.0.0.1 (a free port) in a background
thread; use it as ``with FakeReplicate() as fake:`` or ``async with ...``, then point a client
at ``fake.url``. Every request is recorded (``requests``, ``count(route)``); scripted faults
(``fail_next``) and slow answers (``delay``) apply per route, in the order given.

    FakeReplicate  create/get/cancel predictions, serves output files, sends signed callbacks
    FakeOpenAI     /v1/chat/completions answering scripted replies
    CallbackSink   receives callbacks and records headers and raw bodies
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import functools
import json
import math
import mimetypes
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Self

import anyio.to_thread
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from genloom.providers.callbacks import sign_callback

_TERMINAL = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Fault:
    """One scripted failure answer: its status, an optional Retry-After value and a detail."""

    status: int = 503
    retry_after: str | None = None
    detail: str = "scripted failure"


@dataclass(frozen=True)
class Recorded:
    """A request a stand-in received: which route, and exactly what came over the wire."""

    route: str
    method: str
    path: str
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content) if self.content else None


class StandIn:
    """The server machinery: start/stop, recording, per-route faults and delays."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._delays: dict[str, float] = {}
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    # -- scripting and inspection (any thread) ------------------------------------------------
    def fail_next(
        self, route: str, status: int = 503, *, times: int = 1, retry_after: str | None = None, detail: str = ""
    ) -> None:
        """Answer the next ``times`` requests on ``route`` with ``status`` instead of serving them."""
        fault = Fault(status, retry_after, detail or f"scripted {status}")
        with self._cond:
            self._faults.setdefault(route, deque()).extend([fault] * times)

    def delay(self, route: str, seconds: float) -> None:
        """Wait ``seconds`` (``math.inf``: until stopped) before answering each request on ``route``."""
        with self._cond:
            self._delays[route] = seconds

    def count(self, route: str) -> int:
        with self._cond:
            return sum(1 for r in self.requests if r.route == route)

    def wait_until(self, predicate: Callable[[], bool], within: float = 5.0) -> bool:
        """Block until ``predicate()`` holds (re-checked whenever the stand-in records something);
        False if it still does not after ``within`` seconds."""
        with self._cond:
            return self._cond.wait_for(predicate, within)

    async def wait_until_async(self, predicate: Callable[[], bool], within: float = 5.0) -> bool:
        """``wait_until`` without blocking the caller's event loop."""
        return await anyio.to_thread.run_sync(functools.partial(self.wait_until, predicate, within))

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        app = Starlette(routes=self._routes(), lifespan=self._lifespan)
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", access_log=False, loop="asyncio",
            http="h11", ws="none", lifespan="on", timeout_graceful_shutdown=2,
        )  # fmt: skip
        server = uvicorn.Server(config)
        self._stopping.clear()
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.name = f"{type(self).__name__}:{port}"
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(5)
                sock.close()
                raise RuntimeError(f"{type(self).__name__} did not start")
            time.sleep(0.005)
        self._server, self._thread, self.url = server, thread, f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Release anything waiting, stop the server and join its thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        if self._loop is not None and self._stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stop_event.set)
        server.should_exit = True
        thread.join(10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return await anyio.to_thread.run_sync(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await anyio.to_thread.run_sync(self.stop)

    # -- for subclasses (server thread) ---------------------------------------------------------
    def _routes(self) -> list[Route]:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop, self._stop_event = asyncio.get_running_loop(), asyncio.Event()
        try:
            yield
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, cut short when the stand-in stops (so hung handlers never block it)."""
        if seconds <= 0 or self._stop_event is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), None if math.isinf(seconds) else seconds)

    async def _gate(self, route: str, request: Request) -> Response | None:
        """Record the request, apply the route's delay, and answer a scripted fault if one is due."""
        content = await request.body()
        with self._cond:
            self.requests.append(Recorded(route, request.method, request.url.path, dict(request.headers), content))
            delay = self._delays.get(route, 0.0)
            queue = self._faults.get(route)
            fault = queue.popleft() if queue else None
            self._cond.notify_all()
        if delay:
            await self._pause(delay)
        if fault is None:
            return None
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        return self._error(fault.status, fault.detail, headers)

    def _error(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
        return JSONResponse({"detail": detail}, status, headers=headers)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class ReplicateScript:
    """How FakeReplicate's next predictions behave (each prediction keeps the script it began with)."""

    outcome: Literal["succeed", "fail", "hang"] = "succeed"
    latency: float = 0.0  # seconds from creation until the prediction finishes
    output_file: str | None = None  # the served file the output URL names (default: the first file)
    output_list: bool = False  # output as [url] rather than url
    error: str = "scripted model failure"
    callback: Literal["deliver", "drop", "duplicate"] = "deliver"
    callback_delay: float = 0.0
    callback_attempts: int = 3  # a non-2xx from the receiver is retried, same webhook-id


@dataclass(frozen=True)
class Delivery:
    """One callback attempt FakeReplicate made; ``status`` is None when the receiver was unreachable."""

    webhook_id: str
    url: str
    attempt: int
    status: int | None
    body: bytes


class FakeReplicate(StandIn):
    """Replicate's predictions API. Routes: ``create``, ``get``, ``cancel``, ``file``."""

    def __init__(
        self,
        *,
        files: Mapping[str, bytes] | None = None,
        token: str | None = "r8_test_token",
        webhook_secret: str | None = None,
        script: ReplicateScript | None = None,
    ) -> None:
        super().__init__()
        self.files = dict(files or {"output.png": b"\x89PNG\r\n\x1a\n stand-in"})
        self.token = token
        self.webhook_secret = webhook_secret or _new_secret()
        self.script = script or ReplicateScript()
        self.cancels: list[str] = []
        self.deliveries: list[Delivery] = []
        self._predictions: dict[str, dict[str, Any]] = {}
        self._http: httpx.AsyncClient | None = None

    def prediction(self, prediction_id: str) -> dict[str, Any]:
        """A copy of the stand-in's current record of a prediction."""
        with self._cond:
            return copy.deepcopy(self._predictions[prediction_id])

    def _routes(self) -> list[Route]:
        return [
            Route("/v1/predictions", self._create, methods=["POST"]),
            Route("/v1/models/{owner}/{name}/predictions", self._create, methods=["POST"]),
            Route("/v1/predictions/{id}", self._get, methods=["GET"]),
            Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/files/{name}", self._file, methods=["GET"]),
        ]

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as self._http, super()._lifespan(app):
            yield

    def _error(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
        body = {"title": "Request failed", "status": status, "detail": detail}
        return JSONResponse(body, status, headers=headers, media_type="application/problem+json")

    def _unauthorized(self, request: Request) -> Response | None:
        if self.token is None or request.headers.get("authorization") == f"Bearer {self.token}":
            return None
        return self._error(401, "You did not pass a valid authentication token")

    async def _create(self, request: Request) -> Response:
        if (refused := await self._gate("create", request) or self._unauthorized(request)) is not None:
            return refused
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(400, "body is not JSON")
        owner, name = request.path_params.get("owner"), request.path_params.get("name")
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return self._error(422, "- input: Invalid type. Expected: object")
        if owner is None and not isinstance(body.get("version"), str):
            return self._error(422, "- version: version is required")
        pid = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(26))
        prediction: dict[str, Any] = {
            "id": pid,
            "model": f"{owner}/{name}" if owner else "stand-in/model",
            "version": body.get("version", "hidden"),
            "input": body["input"],
            "logs": "",
            "output": None,
            "error": None,
            "status": "starting",
            "created_at": _now_iso(),
            "started_at": None,
            "completed_at": None,
            "data_removed": False,
            "metrics": {},
            "urls": {"get": f"{self.url}/v1/predictions/{pid}", "cancel": f"{self.url}/v1/predictions/{pid}/cancel"},
        }
        if isinstance(body.get("webhook"), str):
            prediction["webhook"] = body["webhook"]
            prediction["webhook_events_filter"] = body.get("webhook_events_filter") or ["completed"]
        with self._cond:
            self._predictions[pid] = prediction
            answer = copy.deepcopy(prediction)
        self._spawn(self._run(pid, replace(self.script)))
        return JSONResponse(answer, 201)

    async def _get(self, request: Request) -> Response:
        if (refused := await self._gate("get", request) or self._unauthorized(request)) is not None:
            return refused
        with self._cond:
            prediction = copy.deepcopy(self._predictions.get(request.path_params["id"]))
        return JSONResponse(prediction) if prediction else self._error(404, "Not found.")

    async def _cancel(self, request: Request) -> Response:
        if (refused := await self._gate("cancel", request) or self._unauthorized(request)) is not None:
            return refused
        pid = request.path_params["id"]
        with self._cond:
            prediction = self._predictions.get(pid)
            if prediction is None:
                return self._error(404, "Not found.")
            self.cancels.append(pid)
            newly = prediction["status"] not in _TERMINAL
            if newly:
                prediction.update(status="canceled", completed_at=_now_iso())
            answer = copy.deepcopy(prediction)
        if newly:
            self._spawn(self._callback(answer, replace(self.script)))
        return JSONResponse(answer)

    async def _file(self, request: Request) -> Response:
        if (refused := await self._gate("file", request)) is not None:
            return refused
        name = request.path_params["name"]
        if name not in self.files:
            return self._error(404, "Not found.")
        media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(self.files[name], media_type=media_type)

    def _output(self, script: ReplicateScript) -> Any:
        name = script.output_file or next(iter(self.files), None)
        if name is None:
            return None
        url = f"{self.url}/files/{name}"
        return [url] if script.output_list else url

    async def _run(self, pid: str, script: ReplicateScript) -> None:
        with self._cond:
            self._predictions[pid].update(status="processing", started_at=_now_iso())
        if script.outcome == "hang":
            return
        await self._pause(script.latency)
        with self._cond:
            prediction = self._predictions[pid]
            if prediction["status"] in _TERMINAL or self._stopping.is_set():
                return
            if script.outcome == "succeed":
                prediction.update(status="succeeded", output=self._output(script))
            else:
                prediction.update(status="failed", error=script.error)
            prediction.update(completed_at=_now_iso(), metrics={"predict_time": script.latency})
            snapshot = copy.deepcopy(prediction)
            self._cond.notify_all()
        await self._callback(snapshot, script)

    async def _callback(self, prediction: dict[str, Any], script: ReplicateScript) -> None:
        url = prediction.get("webhook")
        if not url or "completed" not in prediction.get("webhook_events_filter", []):
            return
        if script.callback == "drop":
            return
        await self._pause(script.callback_delay)
        body = json.dumps(prediction).encode()
        msg_id = "msg_" + secrets.token_hex(12)
        for _ in range(2 if script.callback == "duplicate" else 1):
            for attempt in range(1, max(1, script.callback_attempts) + 1):
                if self._stopping.is_set() or self._http is None:
                    return
                headers = sign_callback(body, self.webhook_secret, msg_id=msg_id)
                headers["content-type"] = "application/json"
                try:
                    status: int | None = (await self._http.post(url, content=body, headers=headers)).status_code
                except httpx.HTTPError:
                    status = None
                with self._cond:
                    self.deliveries.append(Delivery(msg_id, url, attempt, status, body))
                    self._cond.notify_all()
                if status is not None and 200 <= status < 300:
                    break
                await self._pause(0.05 * 2**attempt)


class FakeOpenAI(StandIn):
    """``POST /v1/chat/completions`` (route ``chat``): answers ``replies`` in turn, then ``default_reply``."""

    def __init__(self, replies: Iterable[str] = (), *, api_key: str | None = None, default_reply: str = "OK") -> None:
        super().__init__()
        self.replies: deque[str] = deque(replies)
        self.api_key = api_key
        self.default_reply = default_reply

    def _routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self._chat, methods=["POST"])]

    def _error(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> Response:
        kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        body = {"error": {"message": detail, "type": kind, "param": None, "code": None}}
        return JSONResponse(body, status, headers=headers)

    async def _chat(self, request: Request) -> Response:
        if (refused := await self._gate("chat", request)) is not None:
            return refused
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return self._error(401, "Incorrect API key provided.")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body.get("messages"):
            return self._error(400, "'model' and 'messages' are required properties")
        with self._cond:
            reply = self.replies.popleft() if self.replies else self.default_reply
        return JSONResponse({
            "id": "chatcmpl-" + secrets.token_hex(8),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })  # fmt: skip


class CallbackSink(StandIn):
    """Receives callbacks on any path (route ``callback``) and answers 204; ``fail_next`` scripts
    refusals. Each received callback is in ``requests`` with its raw body, for verification."""

    def _routes(self) -> list[Route]:
        return [Route("/{path:path}", self._receive, methods=["POST"])]

    async def _receive(self, request: Request) -> Response:
        refused = await self._gate("callback", request)
        return refused if refused is not None else Response(status_code=204)

    @property
    def received(self) -> list[Recorded]:
        with self._cond:
            return [r for r in self.requests if r.route == "callback"]


__all__ = [
    "CallbackSink",
    "Delivery",
    "FakeOpenAI",
    "FakeReplicate",
    "Fault",
    "Recorded",
    "ReplicateScript",
    "StandIn",
]
