"""Outputs in an S3-compatible store (AWS S3, Cloudflare R2, MinIO) through boto3 in worker threads.

Uploads go through boto3's transfer manager (multipart above 8 MiB, streamed from disk); reads are
ranged GETs whose body is read chunk by chunk. Etags are the store's, without the quotes. Connection
failures, timeouts and 5xx/throttling answers become TransientError.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from genloom.errors import InvalidInput, NotFound, TransientError
from genloom.storage.base import StoredObject

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_THROTTLED = frozenset({"SlowDown", "Throttling", "RequestTimeout", "RequestTimeTooSkewed"})


class S3Storage:
    """The Storage Protocol over one bucket, keys optionally under ``prefix``.

    ``endpoint_url`` is None for AWS; R2 and MinIO give theirs. ``path_style`` puts the bucket in the
    path instead of the host name, which MinIO and most self-hosted servers need.
    """

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        region: str,
        access_key: str,
        secret_key: str,
        prefix: str = "",
        *,
        path_style: bool = False,
    ) -> None:
        self._bucket = bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        config = Config(
            s3={"addressing_style": "path" if path_style else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            # boto3 >= 1.36 adds CRC checksums by default; R2 and older MinIO reject or mangle them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=config,
        )

    def local_path(self, key: str) -> Path | None:
        return None

    async def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        name = self._name(key)
        upload = functools.partial(
            self._client.upload_file, str(path), self._bucket, name, ExtraArgs={"ContentType": content_type}
        )
        await _call(upload, key)
        stored = await self.stat(key)
        if stored is None:
            raise TransientError("the object was not visible after upload", key=key)
        return stored

    async def stat(self, key: str) -> StoredObject | None:
        head = functools.partial(self._client.head_object, Bucket=self._bucket, Key=self._name(key))
        try:
            response = await _call(head, key)
        except NotFound:
            return None
        return StoredObject(
            key,
            int(response["ContentLength"]),
            str(response["ETag"]).strip('"'),
            str(response.get("ContentType") or "binary/octet-stream"),
        )

    async def open_range(
        self, key: str, start: int = 0, end: int | None = None, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        if start < 0 or (end is not None and end < start) or chunk_size <= 0:
            raise ValueError(f"bad byte range {start}-{end} (chunk size {chunk_size})")
        params: dict[str, str] = {"Bucket": self._bucket, "Key": self._name(key)}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            response = await _call(functools.partial(self._client.get_object, **params), key)
        except ClientError as exc:
            if _status(exc) == 416:  # start is past the last byte: nothing to send
                return
            raise
        body = response["Body"]
        try:
            while chunk := await _call(functools.partial(body.read, chunk_size), key):
                yield chunk
        finally:
            body.close()

    async def delete(self, key: str) -> None:
        await _call(functools.partial(self._client.delete_object, Bucket=self._bucket, Key=self._name(key)), key)

    def _name(self, key: str) -> str:
        parts = key.split("/")
        if (
            not key
            or len(key.encode()) > 1024 - len(self._prefix)
            or "\\" in key
            or any(ord(c) < 0x20 for c in key)
            or any(not part or part.startswith(".") for part in parts)
        ):
            raise InvalidInput("storage keys are relative paths without '.', '..', '\\' or empty parts", key=key)
        return self._prefix + key


async def _call(fn: Callable[[], Any], key: str) -> Any:
    """Run a blocking boto3 call in a worker thread and map its failures onto genloom's errors."""
    try:
        return await anyio.to_thread.run_sync(fn)
    except ClientError as exc:
        status = _status(exc)
        if status == 404 or _code(exc) in _MISSING:
            raise NotFound("no such stored object", key=key) from exc
        if status >= 500 or _code(exc) in _THROTTLED:
            raise TransientError(f"object store error: {_code(exc)}", key=key) from exc
        raise
    except (BotoConnectionError, HTTPClientError) as exc:
        raise TransientError(f"object store unreachable: {exc}", key=key) from exc


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
