"""SSRF-safe fetching of user URLs: the address policy, DNS pinning, redirects and size/type/time caps.

Every URL genloom contacts for a user (source images, scrape targets, webhook endpoints) is first
checked: http or https only, no userinfo, the host read the way the OS would read it (``2130706433``,
``0x7f.1`` and ``127.1`` are IPv4 literals, not names), a name resolved once, and every address it
resolves to must be publicly routable (`refusal`) unless an allow network covers it. The request then
goes to a checked address (`PinnedTransport`): the URL's host is swapped for the IP while the Host
header and the TLS SNI/certificate name stay the original host, so a DNS answer that changes between
check and connect (rebinding) is never consulted. Redirects are followed by hand, each hop re-checked.

Errors: UnsafeUrl (refused by policy; nothing was contacted), BrokenUrl (invalid, unresolvable,
unreachable, non-2xx, too many redirects, or timed out), Oversize, UnsupportedMedia. A timeout is
BrokenUrl, not TransientError: the URL is the user's, retrying a slow host only ties up a worker, and
the user hears at once (422) instead of after a retry ladder; ``details["reason"]`` says which.
"""

from __future__ import annotations

import codecs
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import httpx

from genloom.errors import BrokenUrl, GenloomError, Oversize, UnsafeUrl, UnsupportedMedia

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str], Awaitable[Sequence[str]]]
"""Maps a host name to its addresses (as strings); raises OSError when it cannot."""

METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "fd00:ec2::254",  # AWS IMDS over IPv6
    )
)
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
# Not meant to be dialled, beyond what the ipaddress flags catch (some of these count as "global").
_V4_REFUSED = ("0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "240.0.0.0/4")
_EXTRA_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n) for n in (*_V4_REFUSED, "::/96", "64:ff9b:1::/48", "fec0::/10")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)")
_HOSTNAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}\.?")


@dataclass(frozen=True)
class FetchResult:
    path: Path
    content_type: str
    size: int
    final_url: str


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed the policy, with the addresses a connection to it may use (in order)."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]


def parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """The address inet_aton(3) reads in ``host`` (``127.1``, ``0x7f.1``, ``0177.0.0.1``), or None for a name.

    As in the WHATWG URL rules, a host whose last label is a number must be an IPv4 address; one that
    is not (``1.2.3.4.5``, ``256.1``, ``08.1``) is refused, since resolvers disagree about such names.
    """
    parts = (host[:-1] if host.endswith(".") else host).split(".")
    if not _NUMBER.fullmatch(parts[-1]):
        return None
    try:
        values = [_inet_aton_part(p) for p in parts]
        if len(values) > 4 or any(v > 255 for v in values[:-1]) or values[-1] >= 256 ** (5 - len(values)):
            raise ValueError(host)
    except ValueError:
        raise UnsafeUrl("the host is a malformed numeric address", host=host) from None
    value = values[-1]
    for i, byte in enumerate(values[:-1]):
        value |= byte << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _inet_aton_part(part: str) -> int:
    if not _NUMBER.fullmatch(part):
        raise ValueError(part)
    if part[:2].lower() == "0x":
        return int(part[2:], 16)
    return int(part, 8) if len(part) > 1 and part[0] == "0" else int(part)


def refusal(address: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why genloom will not connect to ``address``, or None when it may.

    IPv4-mapped addresses are judged as the IPv4 address they are. 6to4 and NAT64 addresses are judged
    by the IPv4 address they embed, which no allow network unlocks. Metadata addresses are always
    refused, allow networks or not.
    """
    address = unmapped(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return "a scoped address"
    if any(address.version == net.version and address in net for net in allow):
        return None
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = refusal(embedded)
        return None if inner is None else f"a relay to {embedded}, {inner}"
    for flag in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved", "site_local"):
        if getattr(address, f"is_{flag}", False):
            return f"a {flag.replace('_', '-')} address"
    if not address.is_global or any(address.version == n.version and address in n for n in _EXTRA_REFUSED):
        return "not a publicly routable address"
    return None


def unmapped(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as ``a.b.c.d``; other addresses unchanged."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def system_resolver(host: str) -> list[str]:
    """The OS resolver (getaddrinfo), answers in its preference order without duplicates."""
    infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends requests for one checked origin to its checked addresses and refuses any other origin.

    The request URL's host becomes the IP; the Host header is kept and, for https, the original host
    is passed as httpcore's ``sni_hostname`` extension, which sets both the SNI and the name the
    certificate is verified against. Later addresses are tried only when connecting fails.
    """

    def __init__(self, checked: CheckedUrl, *, verify: ssl.SSLContext | bool = True) -> None:
        self._origin = _origin(checked.url)
        self._addresses = checked.addresses
        self._inner = httpx.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _origin(request.url) != self._origin:
            raise UnsafeUrl("this client may only reach the URL it was checked for", url=str(request.url))
        extensions = dict(request.extensions)
        if request.url.scheme == "https":
            extensions["sni_hostname"] = request.url.raw_host.decode("ascii")
        failure: httpx.ConnectError | None = None
        for address in self._addresses:
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=str(address)),
                headers=request.headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError as exc:
                failure = exc
        assert failure is not None  # a CheckedUrl always has an address
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()


def _origin(url: httpx.URL) -> tuple[str, bytes, int | None]:
    return url.scheme, url.raw_host, url.port


class SafeFetcher:
    """Checks, pins and fetches user URLs; one per process, configured from settings."""

    def __init__(
        self,
        allow_networks: Sequence[str] = (),
        *,
        max_bytes: int,
        timeout: float,
        max_redirects: int = 3,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._allow = tuple(ipaddress.ip_network(n) for n in allow_networks)
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._resolve = resolver
        self._verify = verify

    async def check_url(self, url: str) -> list[IPAddress]:
        """The addresses ``url`` may be reached at; UnsafeUrl or BrokenUrl when it may not be."""
        return list((await self.check(url)).addresses)

    async def check(self, url: str | httpx.URL) -> CheckedUrl:
        """The parsed URL (numeric hosts in canonical form) and the addresses a connection may use."""
        parsed = self._parse(url)
        host = parsed.raw_host.decode("ascii")
        literal = _literal(host)
        if literal is not None:
            parsed = parsed.copy_with(host=str(unmapped(literal)))  # the canonical spelling
            answers: list[IPAddress] = [literal]
        else:
            answers = await self._lookup(host)
        for address in answers:
            reason = refusal(address, self._allow)
            if reason is not None:
                raise UnsafeUrl(f"{host} is {reason}", url=str(parsed), address=str(address))
        return CheckedUrl(parsed, tuple(dict.fromkeys(unmapped(a) for a in answers)))

    async def pinned_client(self, url: str) -> httpx.AsyncClient:
        """A client that reaches only ``url``'s origin, at its checked addresses, and follows no redirects.

        For webhooks: ``async with await fetcher.pinned_client(url) as client: await client.post(url, ...)``.
        Its timeout applies per phase (connect, read, ...); callers cap the total themselves.
        """
        return self._client(await self.check(url))

    async def fetch_to_file(self, url: str, dest: Path, allowed_types: Collection[str]) -> FetchResult:
        """Stream ``url`` into ``dest`` (written beside it, then renamed into place)."""
        part = dest.with_name(f".{dest.name}.part")
        try:
            with _fetch_errors(), anyio.fail_after(self._timeout):
                async with self._open(url, allowed_types, self._max_bytes) as response:
                    size = 0
                    async with await anyio.open_file(part, "wb") as out:
                        async for chunk in response.aiter_bytes():
                            size = _within(size + len(chunk), self._max_bytes)
                            await out.write(chunk)
            await anyio.to_thread.run_sync(os.replace, part, dest)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.Path(part).unlink(missing_ok=True)
            raise
        return FetchResult(dest, _media_type(response), size, str(response.url))

    async def fetch_text(
        self, url: str, max_bytes: int | None = None, allowed_types: Collection[str] = ("text/html",)
    ) -> str:
        """The body of ``url`` as text, decoded by its declared charset (UTF-8 when none)."""
        limit = self._max_bytes if max_bytes is None else max_bytes
        with _fetch_errors(), anyio.fail_after(self._timeout):
            async with self._open(url, allowed_types, limit) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    _within(len(body) + len(chunk), limit)
                    body += chunk
        return body.decode(_codec(response.charset_encoding), errors="replace")

    @asynccontextmanager
    async def _open(self, url: str, allowed_types: Collection[str], max_bytes: int) -> AsyncIterator[httpx.Response]:
        current: str | httpx.URL = url
        for _ in range(self._max_redirects + 1):
            checked = await self.check(current)
            headers = {"Accept": ", ".join(allowed_types), "Accept-Encoding": "identity"}
            async with self._client(checked) as client, client.stream("GET", checked.url, headers=headers) as r:
                location = r.headers.get("location")
                if r.status_code in _REDIRECTS and location:
                    current = _join(checked.url, location)
                    continue
                _accept(r, allowed_types, max_bytes)
                yield r
                return
        raise BrokenUrl("too many redirects", reason="redirects", url=url)

    def _client(self, checked: CheckedUrl) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=PinnedTransport(checked, verify=self._verify),
            follow_redirects=False,
            trust_env=False,  # no proxies, no .netrc: the checked address is the one we talk to
            timeout=self._timeout,
        )

    def _parse(self, url: str | httpx.URL) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise self._unparsable(str(url)) from exc
        if parsed.scheme not in ("http", "https"):
            raise UnsafeUrl("only http and https URLs are fetched", url=str(url))
        if parsed.userinfo:
            raise UnsafeUrl("URLs with credentials are refused", url=str(url))
        if not parsed.raw_host:
            raise UnsafeUrl("the URL has no host", url=str(url))
        return parsed

    def _unparsable(self, url: str) -> GenloomError:
        """UnsafeUrl for a refused address in a spelling httpx rejects (``0177.0.0.1``), else BrokenUrl."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            host = None
        literal = parse_ipv4_literal(host) if host else None
        if literal is not None and refusal(literal, self._allow) is not None:
            return UnsafeUrl(f"{host} is {refusal(literal, self._allow)}", url=url)
        return BrokenUrl("not a valid URL", reason="invalid", url=url)

    async def _lookup(self, host: str) -> list[IPAddress]:
        name = host.rstrip(".")
        if name == "localhost" or name.endswith(".localhost") or name in METADATA_NAMES:
            raise UnsafeUrl(f"{name} is a local or metadata name", host=host)
        if not _HOSTNAME.fullmatch(host):
            raise BrokenUrl("not a valid host name", reason="invalid", host=host)
        try:
            answers = [ipaddress.ip_address(a) for a in await self._resolve(host)]
        except (OSError, ValueError) as exc:
            raise BrokenUrl(f"could not resolve {host}", reason="dns", host=host) from exc
        if not answers:
            raise BrokenUrl(f"{host} has no addresses", reason="dns", host=host)
        return answers


def _literal(host: str) -> IPAddress | None:
    if "%" in host:
        raise UnsafeUrl("scoped or percent-encoded hosts are refused", host=host)
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise BrokenUrl("not a valid IPv6 address", reason="invalid", host=host) from None
    return parse_ipv4_literal(host)


def _join(base: httpx.URL, location: str) -> httpx.URL:
    try:
        return base.join(location)
    except httpx.InvalidURL:
        raise BrokenUrl("the redirect target is not a valid URL", reason="invalid", url=location) from None


def _accept(response: httpx.Response, allowed_types: Collection[str], max_bytes: int) -> None:
    if not response.is_success:
        status = response.status_code
        raise BrokenUrl(f"the URL answered HTTP {status}", reason="status", status=status)
    media = _media_type(response)
    if media not in {t.lower() for t in allowed_types}:
        raise UnsupportedMedia(
            f"{media or 'no content type'} is not one of {', '.join(sorted(allowed_types))}",
            content_type=media,
        )
    declared: str = response.headers.get("content-length", "")
    if declared.isdigit():
        _within(int(declared), max_bytes)


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower()


def _within(size: int, limit: int) -> int:
    if size > limit:
        raise Oversize(f"the body is larger than {limit} bytes", limit=limit)
    return size


def _codec(charset: str | None) -> str:
    try:
        return str(codecs.lookup(charset or "utf-8").name)
    except LookupError:
        return "utf-8"


@contextmanager
def _fetch_errors() -> Iterator[None]:
    """Transport failures and the time cap become BrokenUrl; policy errors pass through."""
    try:
        yield
    except (TimeoutError, httpx.TimeoutException) as exc:
        raise BrokenUrl("the URL took too long to fetch", reason="timeout") from exc
    except httpx.HTTPError as exc:
        raise BrokenUrl(f"the URL could not be fetched: {exc}", reason="unreachable") from exc
