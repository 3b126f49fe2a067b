"""uvicorn's HTTP/1.1 protocol with a bound on a request's head (request line and headers).

httptools, uvicorn's fast parser, buffers a head of any size: one connection sending a header of a
gigabyte held that much memory and the event loop. Here a head over MAX_HEAD_BYTES is answered 431
in the one error shape and the connection closed, before the app sees it: exactly once the head is
complete, and while it is still arriving once more than the limit has come (so at most the limit
plus a read or two is ever buffered). Without httptools, uvicorn's h11 protocol has a bound of its
own (16 KiB).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_HEAD_BYTES = 32 * 1024


def _refusal(request_id: str) -> bytes:
    body = json.dumps({"error": {
        "code": "headers_too_large", "request_id": request_id,
        "message": f"the request line and headers are larger than the limit of {MAX_HEAD_BYTES} bytes",
    }}).encode()
    head = (
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-request-id: {request_id}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def http_protocol() -> type[asyncio.Protocol] | str:
    """The protocol class for ``uvicorn.Config(http=...)``."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # no httptools: h11, which bounds the head itself
        return "h11"

    from genloom.api.edge import new_request_id

    class BoundedHead(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head: int | None = None  # bytes of the current head seen in later reads; None in a body
            self._head_no = 0
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            head_no, in_head = self._head_no, self._head is not None
            super().data_received(data)
            if in_head and self._head is not None and self._head_no == head_no and not self._refused:
                self._head += len(data)  # the same head, still incomplete after this read
                if self._head > MAX_HEAD_BYTES:
                    self._refuse()

        def _refuse(self) -> None:
            self._refused = True
            self.transport.write(_refusal(new_request_id()))
            self.transport.close()

        def on_message_begin(self) -> None:
            if self._refused:
                return
            super().on_message_begin()
            self._head, self._head_no = 0, self._head_no + 1  # counted from the next read on

        def on_url(self, url: bytes) -> None:
            if not self._refused:
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if not self._refused:
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._head = None
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > MAX_HEAD_BYTES:
                self._refuse()
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self._refused:
                super().on_message_complete()

    return BoundedHead
