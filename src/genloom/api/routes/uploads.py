"""/v1/uploads: a source image sent by the client instead of a URL. The type is decided by the
bytes (JPEG, PNG or WEBP magic and a header scan), never by the client's Content-Type or name;
the key is generated, so no user text reaches a storage path."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile

from genloom.api import schemas
from genloom.api.auth import Caller, caller, genloom
from genloom.api.docs import errors
from genloom.api.errors import ApiError
from genloom.errors import BrokenUrl, InvalidInput, Oversize, UnsupportedMedia
from genloom.media.vision import probe
from genloom.storage.base import upload_key

router = APIRouter(prefix="/v1", tags=["uploads"])
_TYPES = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png"), "WEBP": ("image/webp", "webp")}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/jpeg": _BINARY, "image/png": _BINARY, "image/webp": _BINARY,
    },
}


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the upload is larger than the limit of {limit} bytes")


async def _file_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 16):
        yield chunk


async def _save(chunks: AsyncIterator[bytes], dest: Path, limit: int) -> tuple[int, str]:
    """Stream to ``dest``; (size, sha256 hex), or 413 past ``limit`` bytes."""
    digest, size = hashlib.sha256(), 0
    async with await anyio.open_file(dest, "wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            digest.update(chunk)
            await out.write(chunk)
    return size, digest.hexdigest()


async def _receive(request: Request, dest: Path, limit: int) -> tuple[int, str]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise InvalidInput("body.file: a file part named 'file' is required")
            return await _save(_file_chunks(upload), dest, limit)
        finally:
            await form.close()
    if content_type.startswith("image/"):
        return await _save(request.stream(), dest, limit)
    raise ApiError(415, "unsupported_media_type", "send multipart/form-data with a 'file' part, or an image/* body")


@router.post(
    "/uploads", status_code=201, response_model=schemas.Upload, responses=errors(415),
    openapi_extra={"requestBody": UPLOAD_BODY}, summary="Upload a source image",
    description="JPEG, PNG or WEBP, as a multipart `file` part or a raw image/* body, up to max_upload_bytes "
    "(413 `too_large`). The returned key is a motion job's `input.src`.",
)
async def upload(request: Request, who: Caller = Depends(caller)) -> schemas.Upload:
    app = genloom(request)
    limit = app.settings.max_upload_bytes
    tmp_dir = Path(app.settings.data_dir) / "tmp" / "uploads"
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True)
    tmp = tmp_dir / uuid.uuid4().hex
    try:
        size, sha = await _receive(request, tmp, limit)
        try:
            fmt, width, height = await asyncio.to_thread(
                probe, tmp, max_pixels=app.settings.max_image_pixels, max_bytes=limit)
        except Oversize as exc:
            raise ApiError(413, "too_large", exc.message) from None
        except BrokenUrl:
            raise UnsupportedMedia("the file is not a complete JPEG, PNG or WEBP image") from None
        content_type, ext = _TYPES[fmt]
        key = upload_key(who.project.id, sha, ext)
        await app.services.storage.put_file(key, tmp, content_type)
    finally:
        await asyncio.to_thread(tmp.unlink, True)
    return schemas.Upload(key=key, content_type=content_type, bytes=size, sha256=sha, width=width, height=height)
