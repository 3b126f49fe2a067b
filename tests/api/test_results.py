"""/v1/jobs/{id}/result: whole files, single ranges, validators and the cases without a file."""

from __future__ import annotations

from collections.abc import Callable

from tests.api.conftest import Tenant, error_of, motion


def test_result_is_served_with_ranges_and_validators(tenant: Tenant) -> None:
    job = tenant.wait(tenant.create(motion())["id"])
    url = job["result_url"]
    whole = tenant.http.get(url)
    assert whole.status_code == 200
    body = whole.content
    size = len(body)
    assert size == job["result"]["bytes"] and body[4:8] == b"ftyp"
    h = whole.headers
    assert h["content-type"] == "video/mp4" and h["content-length"] == str(size)
    assert h["accept-ranges"] == "bytes" and h["cache-control"] == "public, max-age=31536000, immutable"
    etag = h["etag"]
    assert etag == f'"{job["result"]["etag"]}"'

    part = tenant.http.get(url, headers={"Range": "bytes=10-109"})
    assert part.status_code == 206 and part.content == body[10:110]
    assert part.headers["content-range"] == f"bytes 10-109/{size}" and part.headers["content-length"] == "100"
    tail = tenant.http.get(url, headers={"Range": "bytes=-16"})
    assert tail.status_code == 206 and tail.content == body[-16:]
    open_end = tenant.http.get(url, headers={"Range": f"bytes={size - 5}-"})
    assert open_end.content == body[-5:] and open_end.headers["content-range"] == f"bytes {size - 5}-{size - 1}/{size}"
    past = tenant.http.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert error_of(past)["code"] == "range_not_satisfiable"
    several = tenant.http.get(url, headers={"Range": "bytes=0-1,5-6"})  # not supported: the whole file
    assert several.status_code == 200 and several.content == body
    stale = tenant.http.get(url, headers={"Range": "bytes=0-1", "If-Range": '"other"'})
    assert stale.status_code == 200

    cached = tenant.http.get(url, headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag
    assert tenant.http.get(url, headers={"If-None-Match": '"nope"'}).status_code == 200
    head = tenant.http.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(size) and head.content == b""


def test_no_file_is_404_and_unfinished_is_409(tenant: Tenant, replicate_script: Callable[..., None]) -> None:
    copy = tenant.wait(tenant.create({"type": "copy", "input": {"name": "x"}})["id"])
    assert copy["status"] == "completed" and copy["result_url"] is None and copy["result"]["headline"]
    r = tenant.http.get(f"/v1/jobs/{copy['id']}/result")
    assert r.status_code == 404 and error_of(r)["code"] == "no_result"
    replicate_script(outcome="hang")
    waiting = tenant.create({"type": "static_ad", "input": {"name": "Mug"}})
    r = tenant.http.get(f"/v1/jobs/{waiting['id']}/result")
    assert r.status_code == 409 and error_of(r)["code"] == "not_ready"
    tenant.http.post(f"/v1/jobs/{waiting['id']}/cancel")
