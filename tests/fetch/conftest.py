"""Fixtures: loopback listeners on 127.0.0.1, 127.0.0.2 and ::1 (skipped where they cannot bind)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import pytest

from .listener import CountingServer


@contextlib.contextmanager
def serving(host: str, tls: ssl.SSLContext | None = None) -> Iterator[CountingServer]:
    try:
        server = CountingServer(host, tls)
    except OSError as exc:
        pytest.skip(reason=f"this machine cannot listen on {host}: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server() -> Iterator[CountingServer]:
    with serving("127.0.0.1") as s:
        yield s


@pytest.fixture
def server2() -> Iterator[CountingServer]:
    """A second listener on another loopback address (127.0.0.2)."""
    with serving("127.0.0.2") as s:
        yield s


@pytest.fixture
def server6() -> Iterator[CountingServer]:
    with serving("::1") as s:
        yield s
