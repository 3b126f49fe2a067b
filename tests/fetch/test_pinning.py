"""Resolution happens once and the connection goes to the checked address: DNS rebinding, TLS, webhooks."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from genloom.errors import BrokenUrl, UnsafeUrl
from genloom.fetch import SafeFetcher, system_resolver

from .conftest import serving
from .listener import LIMIT, PNG, CountingServer

pytestmark = pytest.mark.anyio
IMAGES = ("image/png",)


class ScriptedResolver:
    """Answers each lookup with the next scripted answer and records what it was asked."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str) -> Sequence[str]:
        self.asked.append(host)
        return self.answers[min(len(self.asked), len(self.answers)) - 1]


async def test_dns_rebinding_connects_to_the_checked_address_and_never_resolves_again(
    server: CountingServer, tmp_path: Path
) -> None:
    resolver = ScriptedResolver(["127.0.0.1"], ["10.0.0.1"])
    fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=LIMIT, timeout=5, resolver=resolver)
    url = f"http://rebind.example:{server.port}/image.png"

    result = await fetcher.fetch_to_file(url, tmp_path / "a.png", IMAGES)

    assert result.size == len(PNG)
    assert resolver.asked == ["rebind.example"]  # the connection did not look the name up again
    assert server.accepted == 1
    assert server.hosts == [f"rebind.example:{server.port}"]  # the original Host header was sent
    with pytest.raises(UnsafeUrl):  # the next check sees the rebound answer and refuses it
        await fetcher.fetch_to_file(url, tmp_path / "b.png", IMAGES)
    assert server.accepted == 1


async def test_any_refused_answer_refuses_the_name(server: CountingServer) -> None:
    resolver = ScriptedResolver(["127.0.0.1", "10.0.0.1"])
    fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=LIMIT, timeout=5, resolver=resolver)
    with pytest.raises(UnsafeUrl):
        await fetcher.fetch_text(f"http://mixed.example:{server.port}/page")
    assert server.accepted == 0


async def test_check_url_returns_the_checked_addresses() -> None:
    resolver = ScriptedResolver(["93.184.216.34", "2606:2800:220:1::1", "::ffff:93.184.216.34"])
    fetcher = SafeFetcher(max_bytes=LIMIT, timeout=5, resolver=resolver)
    assert await fetcher.check_url("https://www.example.com/a.png") == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800:220:1::1"),
    ]


async def test_the_default_resolver_asks_the_os() -> None:
    assert "127.0.0.1" in await system_resolver("localhost")


async def test_unresolvable_names_are_broken_urls() -> None:
    async def failing(host: str) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    fetcher = SafeFetcher(max_bytes=LIMIT, timeout=5, resolver=failing)
    with pytest.raises(BrokenUrl) as caught:
        await fetcher.check_url("https://nowhere.invalid/")
    assert caught.value.details["reason"] == "dns"


async def test_a_later_address_is_tried_when_the_first_refuses_connections(server: CountingServer) -> None:
    resolver = ScriptedResolver(["127.0.0.3", "127.0.0.1"])  # nothing listens on 127.0.0.3
    fetcher = SafeFetcher(["127.0.0.0/8"], max_bytes=LIMIT, timeout=5, resolver=resolver)
    assert await fetcher.fetch_text(f"http://two.example:{server.port}/page") == "<p>héllo</p>"


def _self_signed(name: str, directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``name`` and a client context trusting only it."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return server_ctx, ssl.create_default_context(cadata=cert_pem.decode())


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[CountingServer, ssl.SSLContext]]:
    server_ctx, client_ctx = _self_signed("pinned.example", tmp_path)
    with serving("127.0.0.1", tls=server_ctx) as server:
        yield server, client_ctx


async def test_https_keeps_sni_and_certificate_name_while_connecting_to_the_ip(
    tls_server: tuple[CountingServer, ssl.SSLContext],
) -> None:
    server, client_ctx = tls_server
    resolver = ScriptedResolver(["127.0.0.1"])
    fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=LIMIT, timeout=5, resolver=resolver, verify=client_ctx)

    assert await fetcher.fetch_text(f"https://pinned.example:{server.port}/page") == "<p>héllo</p>"
    assert server.sni == ["pinned.example"]
    assert server.hosts == [f"pinned.example:{server.port}"]


async def test_https_certificate_is_verified_against_the_url_host_not_the_ip(
    tls_server: tuple[CountingServer, ssl.SSLContext],
) -> None:
    server, client_ctx = tls_server
    resolver = ScriptedResolver(["127.0.0.1"])
    fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=LIMIT, timeout=5, resolver=resolver, verify=client_ctx)
    with pytest.raises(BrokenUrl) as caught:
        await fetcher.fetch_text(f"https://other.example:{server.port}/page")
    assert "other.example" in str(caught.value.__cause__)  # hostname mismatch, not some other failure
    assert server.sni == ["other.example"]
    assert server.hosts == []


async def test_pinned_client_posts_to_the_checked_url_only(server: CountingServer) -> None:
    resolver = ScriptedResolver(["127.0.0.1"], ["10.0.0.1"])
    fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=LIMIT, timeout=5, resolver=resolver)
    url = f"http://hooks.example:{server.port}/hook"

    async with await fetcher.pinned_client(url) as client:
        response = await client.post(url, content=b'{"event":"job.succeeded"}')
        assert response.status_code == 200
        again = await client.post(url, content=b"{}")  # same pinned address, no second lookup
        assert again.status_code == 200
        redirected = await client.post(f"http://hooks.example:{server.port}/redirect", content=b"{}")
        assert redirected.status_code == 302  # returned, not followed
        with pytest.raises(UnsafeUrl):
            await client.post(f"http://127.0.0.1:{server.port}/hook", content=b"{}")
        with pytest.raises(UnsafeUrl):
            await client.post(f"http://hooks.example:{server.port + 1}/hook", content=b"{}")

    assert resolver.asked == ["hooks.example"]
    assert server.bodies[0] == b'{"event":"job.succeeded"}'
    assert server.hosts[0] == f"hooks.example:{server.port}"


@pytest.mark.parametrize("url", ["http://10.0.0.1/hook", "http://localhost/hook", "ftp://example.com/"])
async def test_pinned_client_refuses_unsafe_webhook_urls(url: str) -> None:
    fetcher = SafeFetcher(max_bytes=LIMIT, timeout=5)
    with pytest.raises(UnsafeUrl):
        await fetcher.pinned_client(url)


async def test_environment_proxies_are_ignored(server: CountingServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:1")
    fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=LIMIT, timeout=5)
    assert await fetcher.fetch_text(f"http://127.0.0.1:{server.port}/page") == "<p>héllo</p>"
    async with await fetcher.pinned_client(f"http://127.0.0.1:{server.port}/hook") as client:
        assert (await client.post(f"http://127.0.0.1:{server.port}/hook", content=b"{}")).status_code == 200
