"""Bad input at the edge and in media, against a server with the default limits (10 MiB bodies,
25 MiB uploads, 40 MP images): oversized and pathological bodies and heads are refused fast with a
4xx in the one error shape and bounded memory; image bombs, broken and disguised files are refused
before any pixel is decoded, by upload and as a motion job's source URL."""

from __future__ import annotations

import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.api.conftest import ApiServer
from tests.conftest import DIALECTS
from tests.reliability.conftest import PeakRss, healthy, project, start_server, wait_all
from tests.reliability.listeners import listening

GiB, MiB = 1 << 30, 1 << 20
BODY_LIMIT = 10 * MiB  # the default max_body_bytes
FAST = 3.0  # seconds: every refusal here is well within it
RSS_BUDGET = 50.0  # MiB the server may grow by while refusing


@pytest.fixture(scope="module", params=DIALECTS)
def media(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, str]]:
    """Default limits; local sources allowed (127.0.0.0/8) so a listener here can serve the bombs."""
    env = {"GENLOOM_FETCH_ALLOW_NETWORKS": '["127.0.0.0/8"]', "GENLOOM_FETCH_TIMEOUT_SECONDS": "5",
           "GENLOOM_RECONCILE_SECONDS": "3600"}
    for srv in start_server(request, tmp_path_factory, "limits", env):
        yield srv, project(srv.db_url).secret_key


class Body:
    """A lazily generated body of ``total`` bytes in 64 KiB chunks; counts what the client handed over."""

    def __init__(self, total: int, fill: bytes = b" ") -> None:
        self.total, self.sent = total, 0
        self.chunk = fill * (65536 // len(fill))

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < self.total:
            part = self.chunk[: self.total - self.sent]
            self.sent += len(part)
            yield part


@dataclass
class Outcome:
    name: str
    status: int
    code: str
    seconds: float
    grew_mb: float
    sent_mb: float | None = None

    def row(self) -> str:
        sent = f", client sent {self.sent_mb:.0f} MiB" if self.sent_mb is not None else ""
        took = f"{self.seconds * 1000:6.0f} ms"
        return f"  {self.name:<46} {self.status} {self.code:<18} {took}  RSS +{self.grew_mb:.1f} MiB{sent}"


def error_code(r: httpx.Response) -> str:
    """The code of an error in the one shape (and its message is there and says something)."""
    err = r.json()["error"]
    assert set(err) == {"code", "message", "request_id"} and len(err["message"]) > 10, err
    return str(err["code"])


def attempt(srv: ApiServer, key: str | None, name: str, method: str, path: str, *,
            content: Any = None, headers: dict[str, str] | None = None, body: Body | None = None) -> Outcome:
    with srv.client(key) as http, PeakRss(srv.proc.pid) as rss:
        t0 = time.monotonic()
        r = http.request(method, path, content=body if body is not None else content, headers=headers)
        seconds = time.monotonic() - t0
    return Outcome(name, r.status_code, error_code(r), seconds, rss.grew,
                   body.sent / MiB if body is not None else None)


def raw_head(srv: ApiServer, head: bytes) -> tuple[int, str, float]:
    """Send a request head as it is (no client library in the way); the status line and error code."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + _length(data):
            more = s.recv(65536)
            if not more:
                break
            data += more
    status = int(data.split(b" ", 2)[1])
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return status, body["error"]["code"], time.monotonic() - t0


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_oversized_and_pathological_requests_are_refused_fast(media: tuple[ApiServer, str]) -> None:
    srv, key = media
    json_type = {"content-type": "application/json"}
    outcomes = [
        attempt(srv, key, "1 GiB JSON, chunked, POST /v1/jobs", "POST", "/v1/jobs", headers=json_type,
                body=Body(GiB)),
        attempt(srv, None, "1 GiB JSON, chunked, no key, POST /v1/jobs", "POST", "/v1/jobs", headers=json_type,
                body=Body(GiB)),
        attempt(srv, key, "1 GiB image, chunked, POST /v1/uploads", "POST", "/v1/uploads",
                headers={"content-type": "image/jpeg"}, body=Body(GiB, b"\xff")),
        attempt(srv, key, "1 GiB JSON, chunked, POST /api/jobs", "POST", "/api/jobs", headers=json_type,
                body=Body(GiB)),
        attempt(srv, key, "1 GiB JSON, chunked, POST /api/generate/copy", "POST", "/api/generate/copy",
                headers=json_type, body=Body(GiB)),
        attempt(srv, key, "1 GiB to a route that reads no body (cancel)", "POST", "/v1/jobs/nope/cancel",
                headers=json_type, body=Body(GiB)),
    ]
    huge = json.dumps({"type": "motion", "input": {"src": "sample", "prompt": "a" * (BODY_LIMIT + 1024)}})
    outcomes.append(attempt(srv, key, "10 MiB JSON, declared length", "POST", "/v1/jobs", content=huge,
                            headers=json_type))
    under = json.dumps({"type": "motion", "input": {"src": "sample", "prompt": "a" * (BODY_LIMIT - 100_000)}})
    outcomes.append(attempt(srv, key, "9.9 MiB JSON under the limit (long prompt)", "POST", "/v1/jobs",
                            content=under, headers=json_type))
    outcomes.append(attempt(srv, key, "100,000-element array as the body", "POST", "/v1/jobs",
                            content=json.dumps([0] * 100_000), headers=json_type))
    big_list = {"type": "video", "input": {"subject": "x", "script": ["a"] * 100_000}}
    outcomes.append(attempt(srv, key, "100,000-element array in the input", "POST", "/v1/jobs",
                            content=json.dumps(big_list), headers=json_type))
    outcomes.append(attempt(srv, key, "1,000-deep nesting", "POST", "/v1/jobs", headers=json_type,
                            content='{"type":"motion","input":{"a":' + "[" * 1000 + "]" * 1000 + "}}"))
    outcomes.append(attempt(srv, key, "900-deep nesting (parses, then refused)", "POST", "/v1/jobs",
                            headers=json_type,
                            content='{"type":"motion","input":' + '{"a":' * 900 + "1" + "}" * 900 + "}"))
    outcomes.append(attempt(srv, key, "5,000-digit number", "POST", "/v1/jobs", headers=json_type,
                            content='{"type":"copy","input":{"name":"x"},"priority":' + "9" * 5000 + "}"))
    outcomes.append(attempt(srv, key, "NaN where a number goes", "POST", "/v1/jobs", headers=json_type,
                            content='{"type":"motion","input":{"src":"sample","dur":NaN}}'))
    outcomes.append(attempt(srv, key, "NUL and a lone surrogate in strings", "POST", "/v1/jobs", headers=json_type,
                            content='{"type":"copy","input":{"name":"a\\u0000b\\ud800"}}'))
    outcomes.append(attempt(srv, key, "invalid UTF-8", "POST", "/v1/jobs", headers=json_type,
                            content=b'{"type":"copy","input":{"name":"\xff\xfe"}}'))
    outcomes.append(attempt(srv, key, "truncated JSON", "POST", "/v1/jobs", headers=json_type,
                            content=b'{"type":"copy","input":{"na'))
    for name, extra in [("64 KiB header", {"X-Padding": "a" * 65536}),
                        ("64 KiB Authorization header", {"Authorization": "Bearer sk_" + "a" * 65536}),
                        ("64 headers of 1 KiB", {f"X-Pad-{i}": "a" * 1024 for i in range(64)})]:
        outcomes.append(attempt(srv, key, name, "GET", "/v1/jobs", headers=extra))
    outcomes.append(attempt(srv, key, "60 KiB URL", "GET", "/v1/jobs?user=" + "u" * 60_000))

    for mib in (1, 64):  # a head that never ends: refused once past the limit, not after it all came
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s, PeakRss(srv.proc.pid) as rss:
            t0, sent = time.monotonic(), 0
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            answer = b""
            try:
                while sent < mib * MiB:
                    s.sendall(b"a" * 65536)
                    sent += 65536
                answer = s.recv(100)
            except OSError:  # reset while sending: the server stopped reading
                pass
            seconds = time.monotonic() - t0
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer
        assert seconds < FAST and rss.grew < RSS_BUDGET
        outcomes.append(Outcome(f"{mib} MiB header that never ends", 431, "headers_too_large (or reset)",
                                seconds, rss.grew, sent / MiB))
    assert raw_head(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n")[:2] == (
        431, "headers_too_large")

    print("\nbody and header limits (max_body_bytes 10 MiB):")
    for o in outcomes:
        print(o.row())
    expected = {"1 GiB": {413}, "10 MiB": {413}, "KiB header": {431}, "headers of": {431}, "URL": {431},
                "nesting": {400, 422}, "digit": {400, 422}, "UTF-8": {400, 422}, "truncated": {400, 422}}
    for o in outcomes:
        allowed = next((s for k, s in expected.items() if k in o.name), {400, 422, 431})
        if o.name.startswith("1 GiB to a route"):
            allowed = {404}  # answered before reading: the connection closes, the body is not drained
        assert o.status in allowed and o.status < 500, o
        assert o.seconds < FAST, o
        assert o.grew_mb < RSS_BUDGET, o
        if o.sent_mb is not None and o.name.startswith("1 GiB"):
            assert o.sent_mb < 100, f"the server read on instead of refusing early: {o}"
    healthy(srv, key)


# -- image bombs and broken media ---------------------------------------------------------------

SAMPLE = (files("genloom") / "assets" / "sample.jpg").read_bytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, idat: bytes | None = None, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = idat if idat is not None else zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def real_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def webp_claiming(width: int, height: int) -> bytes:
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def jpeg_with_comment(text: bytes) -> bytes:
    com = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
    return SAMPLE[:2] + com + SAMPLE[2:]


SVG = b"""<?xml version="1.0"?>
<!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><text>&d;&d;&d;</text>
<script>alert(document.cookie)</script></svg>"""
HTML = b"<!DOCTYPE html><html><body><script>fetch('/v1/jobs').then(r=>r.text()).then(alert)</script></body></html>"


@dataclass(frozen=True)
class Bad:
    name: str
    body: bytes
    served_as: str
    upload: set[int]  # statuses the upload may answer
    codes: set[str]  # error codes the upload and the job may carry


BAD = [
    Bad("PNG header claiming 100000x100000", png(100_000, 100_000), "image/png", {413}, {"too_large", "oversize"}),
    Bad("JPEG frame claiming 65500x65500", jpeg_claiming(65_500, 65_500), "image/jpeg", {413},
        {"too_large", "oversize"}),
    Bad("WebP canvas claiming 16384x16384", webp_claiming(16_384, 16_384), "image/webp", {413},
        {"too_large", "oversize"}),
    Bad("PNG 7000x7000 (49 MP, over 40 MP)", png(7000, 7000), "image/png", {413}, {"too_large", "oversize"}),
    Bad("truncated PNG", real_png()[:60], "image/png", {422}, {"unsupported_media", "broken_url"}),
    Bad("truncated JPEG", SAMPLE[:2000], "image/jpeg", {422}, {"unsupported_media", "broken_url"}),
    Bad("PNG with zero width", png(0, 10), "image/png", {422}, {"unsupported_media"}),
    Bad("empty file", b"", "image/png", {422}, {"unsupported_media"}),
    Bad("SVG (entity bomb, 100000x100000, script)", SVG, "image/png", {422}, {"unsupported_media"}),
    Bad("SVG served as image/svg+xml", SVG, "image/svg+xml", {422}, {"unsupported_media"}),
    Bad("HTML/JS page served as image/jpeg", HTML, "image/jpeg", {422}, {"unsupported_media"}),
    Bad("PNG with a <script> tEXt chunk", png(8, 8, extra=_chunk(b"tEXt", b"c\x00<script>alert(1)</script>")),
        "image/png", {422}, {"unsupported_media"}),
    Bad("JPEG with an <html> comment", jpeg_with_comment(b"<html><script>alert(1)</script>"), "image/jpeg",
        {422}, {"unsupported_media"}),
    Bad("PNG followed by an HTML page", real_png() + HTML, "image/png", {422}, {"unsupported_media"}),
    Bad("GIF/JS polyglot", b"GIF89a=1;alert(document.domain)//" + b"\x00" * 32, "image/png", {422},
        {"unsupported_media"}),
]


def _motion(src: str) -> dict[str, Any]:
    return {"type": "motion", "input": {"src": src, "dur": 1, "height": 240}}


def test_image_bombs_and_broken_media_are_refused_before_decoding(media: tuple[ApiServer, str]) -> None:
    srv, key = media
    served = {f"/{i}": (bad.body, bad.served_as) for i, bad in enumerate(BAD)}
    # A real bomb for the decoder: a legal 1000x1000 PNG whose pixel stream inflates to 50 MB. The
    # header is within the limits, so it is accepted; the decoder must stop at the declared size.
    inflating = png(1000, 1000, idat=zlib.compress((b"\x00" + b"\x00" * 3000) * 1000 + b"\x00" * 50_000_000, 9))
    served["/inflating"] = (inflating, "image/png")
    rows: list[str] = []
    with srv.client(key) as http, listening(served) as files_srv:
        url = f"http://127.0.0.1:{files_srv.port}"
        with PeakRss(srv.proc.pid) as rss:
            t0 = time.monotonic()
            for bad in BAD:
                raw = http.post("/v1/uploads", content=bad.body, headers={"Content-Type": bad.served_as})
                multi = http.post("/v1/uploads", files={"file": ("x.png", bad.body, bad.served_as)})
                for r in (raw, multi):
                    assert r.status_code in bad.upload and error_code(r) in bad.codes, (bad.name, r.status_code, r.text)
                rows.append(f"  {bad.name:<44} upload {raw.status_code} {error_code(raw):<18}")
            uploads_s = time.monotonic() - t0
            ids = [http.post("/v1/jobs", json=_motion(f"{url}/{i}")).json()["id"] for i in range(len(BAD))]
            jobs = wait_all(http, ids, within=60)
            jobs_s = time.monotonic() - t0 - uploads_s
        with PeakRss(srv.proc.pid) as rss_bomb:
            bomb = http.post("/v1/jobs", json=_motion(f"{url}/inflating")).json()["id"]
            bomb_job = wait_all(http, [bomb], within=60)[bomb]
    for i, (bad, job_id) in enumerate(zip(BAD, ids, strict=True)):
        job = jobs[job_id]
        assert job["status"] == "failed" and job["error_code"] in bad.codes, (bad.name, job)
        assert job["attempt"] == 1, "a refused source is not retried"
        rows[i] += f" job failed {job['error_code']:<18} {job['error_message'][:60]}"
    assert bomb_job["status"] == "completed", bomb_job
    assert sorted(files_srv.paths) == sorted(served), "each source was fetched once"
    print(f"\nimage bombs and broken media ({len(BAD)} files, by upload and as a motion source):")
    print("\n".join(rows))
    print(f"  refusing them all: uploads {uploads_s:.2f} s, jobs {jobs_s:.2f} s; server RSS {rss.before:.0f} MiB, "
          f"peak +{rss.grew:.1f} MiB")
    print(f"  a 1000x1000 PNG whose pixel stream inflates to 50 MB: job {bomb_job['status']}, decoded at its "
          f"declared size; server RSS peak +{rss_bomb.grew:.1f} MiB while rendering it")
    assert rss.grew < RSS_BUDGET and rss_bomb.grew < 2 * RSS_BUDGET
    healthy(srv, key)
