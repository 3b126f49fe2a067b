"""SSRF: every URL genloom fetches or posts to for a user (a motion source, a scrape target, a static
ad's image_url, a job's webhook_url, a webhook endpoint's url when created or changed, the Motioness
proxy's src), tried with the bypass spellings,
against a server with nothing allowlisted. A listener on every local address (IPv4 and IPv6) must
see no connection at all, and each attempt must be refused with a clear code: ``unsafe_url`` (or,
for what never names an address, ``broken_url``/``invalid_input``). Redirects and resolver answers
cannot be staged against a real server without a public address, so those run on the fetcher
in-process, as tests/fetch does."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from genloom.errors import GenloomError, UnsafeUrl
from genloom.fetch import SafeFetcher
from tests.api.conftest import ApiServer
from tests.conftest import DIALECTS
from tests.fetch.listener import CountingServer
from tests.reliability.conftest import healthy, project, start_server, wait_all
from tests.reliability.listeners import everywhere, local_addresses

REFUSED = {"unsafe_url"}
NO_ADDRESS = {"unsafe_url", "broken_url"}  # a name no resolver here knows, or a URL httpx cannot parse
NOT_HTTP = {"unsafe_url", "invalid_input"}  # refused by the scheme check, or by the input model first
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture(scope="module", params=DIALECTS)
def strict(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """Nothing allowlisted (not even 127.0.0.0/8); a short fetch timeout, so a fetch that was not
    refused would show as broken_url within seconds rather than pass as a refusal."""
    env = {"GENLOOM_FETCH_TIMEOUT_SECONDS": "3", "GENLOOM_RATE_LIMIT_PER_MINUTE": "0",
           "GENLOOM_RECONCILE_SECONDS": "3600"}
    yield from start_server(request, tmp_path_factory, "ssrf", env)


def _resolves_locally(name: str) -> bool:
    try:
        return all(a[4][0].startswith(("127.", "::1")) for a in socket.getaddrinfo(name, None))
    except OSError:
        return False


def bypass_urls(port: int) -> list[tuple[str, set[str]]]:
    """(URL, the codes its refusal may carry); every host here is this machine or a private network."""
    p = port
    loopback = [
        f"http://127.0.0.1:{p}/i.png", f"http://2130706433:{p}/i.png", f"http://0x7f.1:{p}/i.png",
        f"http://0x7f000001:{p}/i.png", f"http://0177.0.0.1:{p}/i.png", f"http://017700000001:{p}/i.png",
        f"http://127.1:{p}/i.png", f"http://0x7f.0x0.0x0.0x1:{p}/i.png", f"http://127.0.0.2:{p}/i.png",
        f"http://127.0.0.1.:{p}/i.png", f"http://[::1]:{p}/i.png",
        f"http://[::ffff:127.0.0.1]:{p}/i.png", f"http://[::ffff:7f00:1]:{p}/i.png",
        f"http://[0:0:0:0:0:ffff:127.0.0.1]:{p}/i.png", f"http://[::127.0.0.1]:{p}/i.png",
        f"http://[64:ff9b::127.0.0.1]:{p}/i.png", f"http://[2002:7f00:1::]:{p}/i.png",
        f"http://0.0.0.0:{p}/i.png", f"http://0:{p}/i.png", f"http://[::]:{p}/i.png",
        f"http://localhost:{p}/i.png", f"http://LOCALHOST.:{p}/i.png", f"http://a.localhost:{p}/i.png",
        f"http://allowed@127.0.0.1:{p}/i.png", f"http://user:pass@127.0.0.1:{p}/i.png",
        f"http://example.com@127.0.0.1:{p}/i.png", f"http://127.0.0.1:{p}\\@example.com/i.png",
        f"http://%31%32%37.0.0.1:{p}/i.png", f"http://[fe80::1%25lo]:{p}/i.png",
    ]
    urls = [(u, REFUSED) for u in loopback]
    urls.append((f"HTTP://127.0.0.1:{p}/i.png", NOT_HTTP))  # the motion source check reads the scheme as case-sensitive
    hostname = socket.gethostname()
    if _resolves_locally(hostname):  # a name the system resolver maps to loopback, no /etc/hosts edit
        urls.append((f"http://{hostname}:{p}/i.png", REFUSED))
    urls += [(f"http://localtest.me:{p}/i.png", NO_ADDRESS), (f"http://１２７.０.０.１:{p}/i.png", NO_ADDRESS)]
    urls += [(f"http://[{a}]:{p}/i.png" if ":" in a else f"http://{a}:{p}/i.png", REFUSED) for a in local_addresses()]
    private = [
        "http://10.0.0.1/i.png", "http://172.16.0.1/i.png", "http://192.168.0.1/i.png", "http://100.64.0.1/i.png",
        "http://100.127.255.254/i.png", "http://169.254.169.254/latest/meta-data/", "http://169.254.0.1/i.png",
        "http://0251.0376.0251.0376/latest/meta-data/", "http://2852039166/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/", "http://[fe80::1]/i.png", "http://[fc00::1]/i.png",
        "http://[fd00:ec2::254]/latest/meta-data/", "http://100.100.100.200/latest/meta-data/",
        "http://198.18.0.1/i.png", "http://224.0.0.1/i.png", "http://255.255.255.255/i.png",
        "http://metadata.google.internal/computeMetadata/v1/", "http://metadata/computeMetadata/v1/",
        "http://instance-data/latest/meta-data/",
    ]
    urls += [(u, REFUSED) for u in private]
    schemes = ["file:///etc/passwd", f"gopher://127.0.0.1:{p}/_GET%20/", f"ftp://127.0.0.1:{p}/i.png",
               f"dict://127.0.0.1:{p}/info", "data:image/png;base64,iVBORw0KGgo=", f"//127.0.0.1:{p}/i.png",
               f"http:/127.0.0.1:{p}/i.png"]
    urls += [(u, NOT_HTTP) for u in schemes]
    return urls


def origin(url: str) -> str:
    """The origin the Motioness layer compares with the project's allowed origins."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _code(r: httpx.Response) -> str:
    """The error code of a refusal, or "accepted" for an answer that is not one."""
    return str(r.json().get("error", {}).get("code", "accepted"))


def test_every_fetching_sink_refuses_every_bypass_without_a_connection(strict: ApiServer) -> None:
    with everywhere({"/i.png": (PNG, "image/png")}) as listener:
        urls = bypass_urls(listener.port)
        keys = project(strict.db_url, allowed_origins=sorted({origin(u) for u, _ in urls}))
        expect: dict[str, set[str]] = {}
        refused_at_create: list[tuple[str, str, int, str]] = []  # sink, url, status, code
        job_ids: dict[str, tuple[str, str]] = {}  # job id -> (sink, url)
        with strict.client(keys.secret_key) as http:
            # A disabled endpoint at a public address literal (nothing is ever sent to it): its url is changed below.
            endpoint = http.post("/v1/webhooks", json={"url": "http://93.184.216.34/hook", "enabled": False})
            assert endpoint.status_code == 201, endpoint.text
            endpoint_id = endpoint.json()["id"]
            for url, codes in urls:
                expect[url] = codes
                attempts = {
                    "motion src": {"type": "motion", "input": {"src": url, "dur": 1, "height": 240}},
                    "scrape url": {"type": "scrape", "input": {"url": url}},
                    "static_ad image_url": {"type": "static_ad", "input": {"name": "Mug", "image_url": url}},
                    "webhook_url": {"type": "copy", "input": {"name": "Mug"}, "webhook_url": url},
                }
                for sink, body in attempts.items():
                    r = http.post("/v1/jobs", json=body)
                    if r.status_code == 201 and sink != "webhook_url":
                        job_ids[r.json()["id"]] = (sink, url)
                    else:  # refused at once: never a job that could fetch later
                        refused_at_create.append((sink, url, r.status_code, _code(r)))
                for sink, r in (("webhook endpoint url", http.post("/v1/webhooks", json={"url": url})),
                                ("webhook endpoint url change",
                                 http.patch(f"/v1/webhooks/{endpoint_id}", json={"url": url}))):
                    refused_at_create.append((sink, url, r.status_code, _code(r)))
                proxied = httpx.get(f"{strict.url}/v1/{keys.public_key}/video", params={"src": url, "dur": "1"},
                                    timeout=30, trust_env=False)
                if proxied.status_code == 202:
                    job_ids[proxied.json()["asset_id"]] = ("Motioness proxy src", url)
                else:
                    refused_at_create.append(("Motioness proxy src", url, proxied.status_code, _code(proxied)))
            jobs = wait_all(http, list(job_ids), within=90)
            for job_id, (sink, url) in job_ids.items():
                if sink == "Motioness proxy src":  # the proxy URL itself now answers with the failure
                    again = httpx.get(f"{strict.url}/v1/{keys.public_key}/video", params={"src": url, "dur": "1"},
                                      timeout=30, trust_env=False)
                    assert again.status_code == 422 and again.json()["error"]["code"] == jobs[job_id]["error_code"]
            # Without the origin on the project's list, the proxy refuses before any job exists.
            bare = project(strict.db_url)
            gate = httpx.get(f"{strict.url}/v1/{bare.public_key}/video", params={"src": urls[0][0]},
                             timeout=30, trust_env=False)
            assert gate.status_code == 403 and gate.json()["error"]["code"] == "origin_not_allowed"
            endpoints = http.get("/v1/webhooks").json()["data"]
            assert [(e["id"], e["url"]) for e in endpoints] == [(endpoint_id, "http://93.184.216.34/hook")]
        connections = listener.accepted
    per_sink: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for sink, url, status, code in refused_at_create:
        gate = sink == "Motioness proxy src" and (status, code) == (403, "origin_not_allowed")  # no origin
        assert gate or (status == 422 and code in expect[url] | {"invalid_input"}), (sink, url, status, code)
        per_sink[sink] += 1
        codes[code] += 1
    for job_id, (sink, url) in job_ids.items():
        job = jobs[job_id]
        assert job["status"] == "failed" and job["error_code"] in expect[url], (sink, url, job)
        assert job["attempt"] == 1 and job["started_at"] is not None
        per_sink[sink] += 1
        codes[job["error_code"]] += 1
    print(f"\nSSRF: {len(urls)} URL forms x {len(per_sink)} sinks = {sum(per_sink.values())} attempts; "
          f"{len(refused_at_create)} refused at the request (422; 403 for a proxy origin not on the list), "
          f"{len(job_ids)} jobs failed at the fetch")
    for sink, n in sorted(per_sink.items()):
        print(f"  {sink:<28} {n} refused")
    print(f"  codes: {dict(sorted(codes.items()))}")
    print(f"  connections seen by the listener on every local address (port {listener.port}): {connections}")
    assert len(per_sink) == 7 and sum(per_sink.values()) == 7 * len(urls)
    assert connections == 0
    assert listener.paths == []
    healthy(strict, keys.secret_key)


# -- redirects and resolver answers, on the fetcher in-process -----------------------------------

Attempt = Callable[[SafeFetcher, str, Path], Awaitable[object]]


async def _to_file(f: SafeFetcher, url: str, tmp: Path) -> object:
    return await f.fetch_to_file(url, tmp / "out", ("image/png", "image/jpeg", "image/webp"))


async def _text(f: SafeFetcher, url: str, tmp: Path) -> object:
    return await f.fetch_text(url)


async def _webhook(f: SafeFetcher, url: str, tmp: Path) -> object:
    async with await f.pinned_client(url) as client:
        return (await client.post(url, content=b"{}")).status_code


def _refused(attempt: Attempt, fetcher: SafeFetcher, url: str, tmp: Path) -> str:
    try:
        asyncio.run(attempt(fetcher, url, tmp))
    except GenloomError as exc:
        return exc.code
    return "fetched"


def test_redirects_and_resolver_answers_to_private_addresses_are_refused(tmp_path: Path) -> None:
    allowed = CountingServer("127.0.0.1")  # stands in for a public host: the one allowlisted address
    try:
        with everywhere({"/i.png": (PNG, "image/png")}) as target:
            t = target.port
            hops = [f"http://127.0.0.2:{t}/i.png", f"http://[::1]:{t}/i.png", f"http://2130706434:{t}/i.png",
                    f"http://0x7f.0.0.2:{t}/i.png", f"http://localhost:{t}/i.png", f"http://0.0.0.0:{t}/i.png",
                    f"http://[::ffff:127.0.0.2]:{t}/i.png", f"//127.0.0.2:{t}/i.png",
                    f"http://allowed@127.0.0.1:{allowed.port}/image.png", "http://169.254.169.254/latest/meta-data/",
                    "http://metadata.google.internal/computeMetadata/v1/", "file:///etc/passwd",
                    f"gopher://127.0.0.2:{t}/_x"] + [f"http://[{a}]:{t}/" if ":" in a else f"http://{a}:{t}/"
                                                     for a in local_addresses()]
            tls = ssl.create_default_context()  # one context for every client (building one costs ~20 ms)
            fetcher = SafeFetcher(["127.0.0.1/32"], max_bytes=1 << 20, timeout=3, verify=tls)
            redirect_results: Counter[str] = Counter()
            for status in (301, 302, 303, 307, 308):
                for hop in hops:
                    start = str(httpx.URL(f"http://127.0.0.1:{allowed.port}/redirect",
                                          params={"to": hop, "status": status}))
                    for attempt in (_to_file, _text):
                        redirect_results[_refused(attempt, fetcher, start, tmp_path)] += 1
            # A webhook client follows no redirect at all: the 302 is the answer.
            hook = f"http://127.0.0.1:{allowed.port}/redirect"
            assert asyncio.run(_webhook(fetcher, hook, tmp_path)) == 302
            redirects_made = allowed.accepted

            def resolving_to(*answers: str) -> Callable[[str], Awaitable[Sequence[str]]]:
                async def resolve(host: str) -> Sequence[str]:
                    return answers
                return resolve

            answers = [("127.0.0.2",), ("::1",), ("::ffff:127.0.0.2",), ("10.0.0.1",), ("100.64.0.1",),
                       ("169.254.169.254",), ("fd00::2",), ("0.0.0.0",), ("93.184.216.34", "127.0.0.2"),
                       ("2606:2800:220:1::1", "::1"), *((a,) for a in local_addresses())]
            dns_results: Counter[str] = Counter()
            for answer in answers:
                named = SafeFetcher([], max_bytes=1 << 20, timeout=3, resolver=resolving_to(*answer), verify=tls)
                for attempt in (_to_file, _text, _webhook):
                    dns_results[_refused(attempt, named, f"http://innocent.example:{t}/i.png", tmp_path)] += 1
            connections = target.accepted
    finally:
        allowed.stop()
    print(f"\nSSRF in-process: {sum(redirect_results.values())} redirects from an allowed host "
          f"({len(hops)} targets x 5 statuses x 2 fetches) -> {dict(redirect_results)}; "
          f"{sum(dns_results.values())} fetches of a name resolving to {len(answers)} private answers "
          f"-> {dict(dns_results)}; connections to the targets: {connections}")
    assert set(redirect_results) == {UnsafeUrl.code} and set(dns_results) == {UnsafeUrl.code}
    assert redirects_made == sum(redirect_results.values()) + 1  # each redirect was asked for, then refused
    assert connections == 0
