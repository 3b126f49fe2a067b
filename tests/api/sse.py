"""A small Server-Sent Events reader over httpx, for the tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Message:
    id: int | None = None
    event: str = "message"
    data: str = ""
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.data)


def messages(response: httpx.Response) -> Iterator[Message]:
    """Messages and comment-only blocks (heartbeats) as they arrive."""
    current = Message()
    lines: list[str] = []
    for line in response.iter_lines():
        if line == "":
            if lines or current.comments:
                current.data = "\n".join(lines)
                yield current
            current, lines = Message(), []
            continue
        if line.startswith(":"):
            current.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            current.id = int(value)
        elif name == "event":
            current.event = value
        elif name == "data":
            lines.append(value)


@dataclass
class Read:
    events: list[Message]
    heartbeats: int
    closed: bool
    seconds: float


def read(client: httpx.Client, path: str, *, last_event_id: int | None = None, stop_after: int | None = None,
         params: dict[str, Any] | None = None, within: float = 30.0) -> Read:
    """Read a stream until the server closes it (``closed``) or ``stop_after`` events arrived."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    got: list[Message] = []
    beats = 0
    t0 = time.monotonic()
    with client.stream("GET", path, headers=headers, params=params, timeout=within) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for msg in messages(response):
            if msg.id is None:
                beats += msg.comments.count("ping")
                continue
            got.append(msg)
            if stop_after is not None and len(got) >= stop_after:
                return Read(got, beats, False, time.monotonic() - t0)
            if time.monotonic() - t0 > within:
                raise AssertionError("the stream did not end in time")
    return Read(got, beats, True, time.monotonic() - t0)
