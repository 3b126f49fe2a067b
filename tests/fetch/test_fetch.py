"""SafeFetcher against real loopback listeners: what is fetched, what is refused before connecting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from genloom.errors import BrokenUrl, Oversize, UnsafeUrl, UnsupportedMedia
from genloom.fetch import SafeFetcher

from .listener import LIMIT, PNG, CountingServer

IMAGES = ("image/jpeg", "image/png", "image/webp")
LOOPBACK = ("127.0.0.0/8", "::1/128")

pytestmark = pytest.mark.anyio


def files_in(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def fetcher(*allow: str, timeout: float = 5.0, max_redirects: int = 3) -> SafeFetcher:
    return SafeFetcher(allow, max_bytes=LIMIT, timeout=timeout, max_redirects=max_redirects)


# Refused with no allow networks: every spelling of loopback and the private ranges.
REFUSED_BY_ADDRESS = [
    "http://127.0.0.1:{port}/image.png",
    "http://localhost:{port}/image.png",
    "http://LocalHost.:{port}/image.png",
    "http://app.localhost:{port}/image.png",
    "http://2130706433:{port}/image.png",
    "http://0x7f000001:{port}/image.png",
    "http://0177.0.0.1:{port}/image.png",
    "http://127.1:{port}/image.png",
    "http://0x7f.1:{port}/image.png",
    "http://127.0.0.1.:{port}/image.png",
    "http://[::1]:{port}/image.png",
    "http://[::ffff:127.0.0.1]:{port}/image.png",
    "http://[::ffff:7f00:1]:{port}/image.png",
    "http://[::127.0.0.1]:{port}/image.png",
    "http://[2002:7f00:1::]:{port}/image.png",
    "http://[64:ff9b::7f00:1]:{port}/image.png",
    "http://0.0.0.0:{port}/image.png",
    "http://0:{port}/image.png",
    "http://[::]:{port}/image.png",
    "http://10.0.0.1:{port}/image.png",
    "http://172.16.0.1:{port}/image.png",
    "http://192.168.1.1:{port}/image.png",
    "http://100.64.0.1:{port}/image.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fe80::1%25lo]:{port}/image.png",
    "http://1.2.3.4.5:{port}/image.png",
]

# Refused whatever the allow networks say.
REFUSED_BY_FORM = [
    "http://user@127.0.0.1:{port}/image.png",
    "http://user:pass@127.0.0.1:{port}/image.png",
    "file:///etc/passwd",
    "gopher://127.0.0.1:{port}/_GET",
    "ftp://127.0.0.1:{port}/image.png",
    "data:image/png;base64,iVBORw0KGgo=",
    "http://:{port}/image.png",
    "http:///image.png",
]


@pytest.mark.parametrize("template", REFUSED_BY_ADDRESS)
async def test_loopback_and_private_spellings_are_refused_without_connecting(
    server: CountingServer, template: str
) -> None:
    with pytest.raises(UnsafeUrl):
        await fetcher().fetch_text(template.format(port=server.port), allowed_types=IMAGES)
    assert server.accepted == 0


@pytest.mark.parametrize("template", REFUSED_BY_FORM)
async def test_userinfo_and_other_schemes_are_refused_even_for_allowed_addresses(
    server: CountingServer, template: str
) -> None:
    with pytest.raises(UnsafeUrl):
        await fetcher(*LOOPBACK).fetch_text(template.format(port=server.port), allowed_types=IMAGES)
    assert server.accepted == 0


async def test_ipv6_loopback_is_refused_unless_allowed(server6: CountingServer) -> None:
    url = f"http://[::1]:{server6.port}/image.png"
    with pytest.raises(UnsafeUrl):
        await fetcher().fetch_text(url, allowed_types=IMAGES)
    assert server6.accepted == 0
    assert await fetcher(*LOOPBACK).fetch_text(url, allowed_types=IMAGES)
    assert server6.accepted == 1


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/image.png",
        "http://2130706433:{port}/image.png",
        "http://0x7f000001:{port}/image.png",
        "http://127.1:{port}/image.png",
        "http://[::ffff:127.0.0.1]:{port}/image.png",
    ],
)
async def test_allowed_loopback_is_fetched_to_a_file(server: CountingServer, tmp_path: Path, template: str) -> None:
    dest = tmp_path / "source.png"
    result = await fetcher(*LOOPBACK).fetch_to_file(template.format(port=server.port), dest, IMAGES)
    assert dest.read_bytes() == PNG
    assert (result.path, result.content_type, result.size) == (dest, "image/png", len(PNG))
    assert result.final_url == f"http://127.0.0.1:{server.port}/image.png"  # the canonical spelling
    assert server.accepted == 1
    assert files_in(tmp_path) == [dest]


async def test_redirect_to_an_address_outside_the_allow_list_is_refused(
    server: CountingServer, server2: CountingServer
) -> None:
    target = f"http://127.0.0.2:{server2.port}/image.png"
    url = f"http://127.0.0.1:{server.port}/redirect?to={target}"
    with pytest.raises(UnsafeUrl):
        await fetcher("127.0.0.1/32").fetch_text(url, allowed_types=IMAGES)
    assert (server.accepted, server2.accepted) == (1, 0)


async def test_redirect_within_the_allow_list_is_followed(
    server: CountingServer, server2: CountingServer, tmp_path: Path
) -> None:
    target = f"http://127.0.0.2:{server2.port}/image.png"
    url = f"http://127.0.0.1:{server.port}/redirect?status=307&to={target}"
    result = await fetcher("127.0.0.1/32", "127.0.0.2/32").fetch_to_file(url, tmp_path / "a.png", IMAGES)
    assert result.final_url == target
    assert (server.accepted, server2.accepted) == (1, 1)


async def test_relative_redirect_is_resolved_against_the_original_url(server: CountingServer) -> None:
    url = f"http://127.0.0.1:{server.port}/redirect?to=/page"
    assert await fetcher(*LOOPBACK).fetch_text(url) == "<p>héllo</p>"


@pytest.mark.parametrize("target", ["file:///etc/passwd", "http://169.254.169.254/", "http://10.0.0.1/"])
async def test_redirect_to_a_refused_target_is_refused(server: CountingServer, target: str) -> None:
    with pytest.raises(UnsafeUrl):
        await fetcher(*LOOPBACK).fetch_text(f"http://127.0.0.1:{server.port}/redirect?to={target}")


async def test_redirects_are_capped(server: CountingServer) -> None:
    with pytest.raises(BrokenUrl) as caught:
        await fetcher(*LOOPBACK, max_redirects=3).fetch_text(f"http://127.0.0.1:{server.port}/loop")
    assert caught.value.details["reason"] == "redirects"
    assert server.accepted == 4  # the first request and three redirects


async def test_declared_oversize_is_refused_before_writing(server: CountingServer, tmp_path: Path) -> None:
    dest = tmp_path / "big.png"
    with pytest.raises(Oversize):
        await fetcher(*LOOPBACK).fetch_to_file(f"http://127.0.0.1:{server.port}/declared-big", dest, IMAGES)
    assert files_in(tmp_path) == []


async def test_undeclared_oversize_is_cut_off_and_the_partial_file_removed(
    server: CountingServer, tmp_path: Path
) -> None:
    dest = tmp_path / "big.png"
    with pytest.raises(Oversize):
        await fetcher(*LOOPBACK).fetch_to_file(f"http://127.0.0.1:{server.port}/streamed-big", dest, IMAGES)
    assert files_in(tmp_path) == []


async def test_fetch_text_has_its_own_size_cap(server: CountingServer) -> None:
    with pytest.raises(Oversize):
        await fetcher(*LOOPBACK).fetch_text(f"http://127.0.0.1:{server.port}/page", max_bytes=4)


@pytest.mark.parametrize("path", ["/text", "/untyped", "/page"])
async def test_unexpected_content_types_are_unsupported_media(
    server: CountingServer, tmp_path: Path, path: str
) -> None:
    with pytest.raises(UnsupportedMedia):
        await fetcher(*LOOPBACK).fetch_to_file(f"http://127.0.0.1:{server.port}{path}", tmp_path / "x", IMAGES)
    assert files_in(tmp_path) == []


async def test_text_is_decoded_by_its_declared_charset(server: CountingServer) -> None:
    assert await fetcher(*LOOPBACK).fetch_text(f"http://127.0.0.1:{server.port}/latin1") == "<p>héllo</p>"


async def test_error_status_is_a_broken_url(server: CountingServer) -> None:
    with pytest.raises(BrokenUrl) as caught:
        await fetcher(*LOOPBACK).fetch_text(f"http://127.0.0.1:{server.port}/missing")
    assert caught.value.details == {"reason": "status", "status": 404}


async def test_slow_url_is_a_broken_url_after_the_time_cap(server: CountingServer, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BrokenUrl) as caught:
        await fetcher(*LOOPBACK, timeout=0.3).fetch_to_file(
            f"http://127.0.0.1:{server.port}/slow", tmp_path / "x.png", IMAGES
        )
    assert caught.value.details["reason"] == "timeout"
    assert time.monotonic() - started < 1.5
    assert files_in(tmp_path) == []


async def test_closed_port_is_a_broken_url() -> None:
    with pytest.raises(BrokenUrl) as caught:
        await fetcher(*LOOPBACK).fetch_text("http://127.0.0.1:1/page")
    assert caught.value.details["reason"] == "unreachable"
