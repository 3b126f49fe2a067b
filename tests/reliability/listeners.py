"""Real HTTP listeners for the scenarios: one that serves given bytes per path, and one that listens on
every local address (dual-stack ``::``, else ``0.0.0.0``) and counts each connection it accepts."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.fetch.listener import Listener


class FileServer(Listener):
    """Serves ``files[path] = (body, content type)``; counts connections and requests."""

    def __init__(self, files: dict[str, tuple[bytes, str]], host: str = "127.0.0.1") -> None:
        super().__init__(host, _Handler)
        self.files = files
        self.paths: list[str] = []
        self.start()

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.paths.append(path)
        body, content_type = self.server.files.get(path, (b"not found", "text/plain"))
        self.send_response(200 if path in self.server.files else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()


@contextlib.contextmanager
def listening(files: dict[str, tuple[bytes, str]], host: str = "127.0.0.1") -> Iterator[FileServer]:
    srv = FileServer(files, host)
    try:
        yield srv
    finally:
        srv.stop()


@contextlib.contextmanager
def everywhere(files: dict[str, tuple[bytes, str]]) -> Iterator[FileServer]:
    """A listener on every local address, IPv4 and IPv6 when the machine has it."""
    try:
        srv = FileServer(files, "::")
    except OSError:
        srv = FileServer(files, "0.0.0.0")
    try:
        yield srv
    finally:
        srv.stop()


def local_addresses() -> list[str]:
    """This machine's own non-loopback addresses (each reaches a listener on every address)."""
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing address
        found.append(s.getsockname()[0])
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            raw, _, _, scope, _, dev = line.split()
            if dev != "lo" and scope == "00":  # global scope (ULA included)
                found.append(str(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw))))
    return [a for a in dict.fromkeys(found) if not a.startswith("127.")]
