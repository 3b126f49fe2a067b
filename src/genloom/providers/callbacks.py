"""Inbound provider callbacks: Standard Webhooks signatures, verified against rotating secrets.

Replicate (and any Standard Webhooks sender) signs ``{webhook-id}.{webhook-timestamp}.{body}``
with HMAC-SHA256 under a ``whsec_`` secret and sends ``v1,<base64>`` entries, space separated,
in ``webhook-signature``. The ``standardwebhooks`` library owns the secret decoding and the
signature; this module owns the header parsing, the clock tolerance (injectable, unlike the
library's ``verify``, which reads the wall clock and lets malformed headers escape as
``ValueError``/``binascii.Error``) and trying every configured secret so that a rotation
never drops a callback. Replay protection (one webhook-id processed once) belongs to the
caller's store; :func:`webhook_id` extracts the key it needs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook

from genloom.errors import InvalidInput, Unauthorized

_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def webhook_id(headers: Mapping[str, str]) -> str | None:
    """The callback's ``webhook-id`` (the same on every retry of one message), or None."""
    value = _lowered(headers).get("webhook-id", "").strip()
    return value or None


def _refuse(reason: str) -> Unauthorized:
    return Unauthorized(f"callback refused: {reason}", code="invalid_signature", reason=reason)


def _signers(secrets: Sequence[str]) -> list[Webhook]:
    if isinstance(secrets, str) or not secrets:
        raise ValueError("verify_callback needs a non-empty sequence of whsec_ secrets")
    try:
        return [Webhook(secret) for secret in secrets]
    except Exception as exc:  # the library raises binascii.Error or its own empty-secret error
        raise ValueError("a configured webhook secret is not valid base64") from exc


def _offered_signatures(header: str) -> list[bytes]:
    offered = []
    for entry in header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1" or not encoded:
            continue
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return offered


def verify_callback(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> dict[str, Any]:
    """Return the callback's JSON object if any of ``secrets`` signed it within ``tolerance_s``.

    Raises Unauthorized (code ``invalid_signature``) for missing headers, a timestamp outside
    the tolerance either way, a body or id altered after signing, or a secret not (or no
    longer) in ``secrets``; InvalidInput if a correctly signed body is not a JSON object;
    ValueError if ``secrets`` itself is empty or malformed (a configuration error).
    """
    signers = _signers(secrets)
    lowered = _lowered(headers)
    msg_id = lowered.get("webhook-id", "").strip()
    stamp = lowered.get("webhook-timestamp", "").strip()
    signature = lowered.get("webhook-signature", "").strip()
    if not (msg_id and stamp and signature):
        raise _refuse("missing webhook-id, webhook-timestamp or webhook-signature")
    if not _TIMESTAMP.fullmatch(stamp):
        raise _refuse("malformed webhook-timestamp")
    sent_at = int(stamp)
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_s:
        raise _refuse("webhook-timestamp outside the tolerance")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("body is not UTF-8") from None
    offered = _offered_signatures(signature)
    signed_at = datetime.fromtimestamp(sent_at, UTC)
    for signer in signers:
        expected = base64.b64decode(signer.sign(msg_id, signed_at, text).partition(",")[2])
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            break
    else:
        raise _refuse("no matching signature")
    try:
        payload = json.loads(text)
    except ValueError:
        raise InvalidInput("callback body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput("callback body is not a JSON object")
    return payload


def sign_callback(body: bytes, secret: str, *, msg_id: str, timestamp: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers a sender attaches to ``body`` (for stand-ins and tests)."""
    sent_at = int(time.time() if timestamp is None else timestamp)
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(sent_at, UTC), body.decode("utf-8"))
    return {"webhook-id": msg_id, "webhook-timestamp": str(sent_at), "webhook-signature": signature}
