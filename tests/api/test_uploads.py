"""/v1/uploads: images in (multipart or raw), checked by their bytes, usable as a motion source."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

from tests.api.conftest import MAX_UPLOAD, Tenant, error_of, motion, png_bytes

SAMPLE = (files("genloom") / "assets" / "sample.jpg").read_bytes()
KEY = re.compile(r"uploads/prj_[0-9a-z]+/[0-9a-f]{16}/[0-9a-f]{32}\.(jpg|png|webp)")


def test_multipart_upload_feeds_a_motion_job(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/uploads", files={"file": ("photo.png", SAMPLE, "image/png")})  # the name lies
    assert r.status_code == 201, r.text
    up = r.json()
    assert KEY.fullmatch(up["key"]) and up["key"].endswith(".jpg") and up["content_type"] == "image/jpeg"
    assert up["bytes"] == len(SAMPLE) and up["width"] > 0 and up["height"] > 0
    job = tenant.http.post("/v1/jobs", json=motion(src=up["key"]), headers={"Prefer": "wait=30"}).json()
    assert job["status"] == "completed", job


def test_raw_image_body(tenant: Tenant) -> None:
    r = tenant.http.post("/v1/uploads", content=png_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 201, r.text
    assert r.json()["key"].endswith(".png") and (r.json()["width"], r.json()["height"]) == (64, 48)


def test_refusals(tenant: Tenant) -> None:
    not_image = tenant.http.post("/v1/uploads", content=b"GIF89a" + b"\0" * 100, headers={"Content-Type": "image/gif"})
    assert not_image.status_code == 422 and error_of(not_image)["code"] == "unsupported_media"
    truncated = tenant.http.post("/v1/uploads", content=SAMPLE[:2000], headers={"Content-Type": "image/jpeg"})
    assert truncated.status_code == 422 and error_of(truncated)["code"] == "unsupported_media"
    text = tenant.http.post("/v1/uploads", content=b"hello", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415 and error_of(text)["code"] == "unsupported_media_type"
    two = tenant.http.post("/v1/uploads", files=[("file", ("a.png", png_bytes(), "image/png")),
                                                 ("file", ("b.png", png_bytes(), "image/png"))])
    assert two.status_code == 400 and error_of(two)["code"] == "invalid_input"
    no_file = tenant.http.post("/v1/uploads", files={"other": ("a.png", png_bytes(), "image/png")})
    assert no_file.status_code == 422 and error_of(no_file)["code"] == "invalid_input"
    big = SAMPLE + b"\0" * (MAX_UPLOAD - len(SAMPLE) + 1)
    kwargs: dict[str, Any]
    for kwargs in ({"files": {"file": ("a.jpg", big, "image/jpeg")}},
                   {"content": big, "headers": {"Content-Type": "image/jpeg"}},
                   {"content": iter([big[:100_000], big[100_000:]]), "headers": {"Content-Type": "image/jpeg"}}):
        r = tenant.http.post("/v1/uploads", **kwargs)
        assert r.status_code == 413 and error_of(r)["code"] == "too_large", r.text


def test_an_upload_is_usable_only_by_its_own_project(tenant: Tenant, other: Tenant) -> None:
    up = tenant.http.post("/v1/uploads", content=png_bytes(), headers={"Content-Type": "image/png"}).json()
    assert up["key"].startswith(f"uploads/{tenant.keys.project.id}/")
    job = other.http.post("/v1/jobs", json=motion(src=up["key"]), headers={"Prefer": "wait=30"}).json()
    assert (job["status"], job["error_code"]) == ("failed", "invalid_input"), job
    assert "no uploaded file" in job["error_message"]
