"""A real HTTP(S) listener on loopback that counts the connections it accepts."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16
LIMIT = 64 * 1024


class Listener(ThreadingHTTPServer):
    """A threaded HTTP server on ``host`` (an IPv6 host when it has a colon), serving from a thread
    of its own, counting the connections it accepts; subclasses add what they record."""

    daemon_threads = True

    def __init__(self, host: str, handler: type[BaseHTTPRequestHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, 0), handler)
        self.accepted = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        self.accepted += 1
        return conn, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up early are expected here."""

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class CountingServer(Listener):
    """Counts accepted connections and records each request's Host header, SNI and body."""

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, Handler)
        self.tls = tls
        self.hosts: list[str | None] = []
        self.sni: list[str | None] = []
        self.bodies: list[bytes] = []
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
        self.start()

    def get_request(self) -> tuple[Any, Any]:
        conn, addr = super().get_request()
        if self.tls is not None:
            conn = self.tls.wrap_socket(conn, server_side=True)
        return conn, addr


class Handler(BaseHTTPRequestHandler):
    server: CountingServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.server.hosts.append(self.headers.get("Host"))
        self.server.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if self.path.startswith("/redirect"):
            self._send(302, b"", location="http://127.0.0.1:1/")
        else:
            self._send(200, b'{"ok":true}', "application/json")

    def do_GET(self) -> None:
        self.server.hosts.append(self.headers.get("Host"))
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        match url.path:
            case "/image.png":
                self._send(200, PNG, "image/png")
            case "/page":
                self._send(200, "<p>héllo</p>".encode(), "text/html; charset=utf-8")
            case "/latin1":
                self._send(200, "<p>héllo</p>".encode("latin-1"), "text/html; charset=iso-8859-1")
            case "/text":
                self._send(200, b"plain", "text/plain")
            case "/untyped":
                self._send(200, PNG, None)
            case "/declared-big":
                self._send(200, PNG, "image/png", declared=10 * LIMIT)
            case "/streamed-big":  # HTTP/1.0, no Content-Length: the body ends when the socket does
                self._send(200, PNG * (2 * LIMIT // len(PNG) + 1), "image/png", close_delimited=True)
            case "/redirect":
                self._send(int(query.get("status", "302")), b"", location=query["to"])
            case "/loop":
                self._send(302, b"", location="/loop")
            case "/slow":
                time.sleep(2)
                self._send(200, PNG, "image/png")
            case _:
                self._send(404, b"not found", "text/plain")

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str | None = None,
        *,
        location: str | None = None,
        declared: int | None = None,
        close_delimited: bool = False,
    ) -> None:
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        if location is not None:
            self.send_header("Location", location)
        if not close_delimited:
            self.send_header("Content-Length", str(len(body) if declared is None else declared))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)
