"""Standard Webhooks signing for outbound deliveries: ``whsec_`` secrets and ``v1,`` signatures.

A signature is ``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`` under the
base64-decoded part of the secret. While a rotated-out secret is still valid, a delivery carries a
signature under each secret, space separated, so a receiver that knows either one accepts it.
Computed here with hmac (no per-call key parsing); the tests check it against the
``standardwebhooks`` library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence

PREFIX = "whsec_"
ROTATION_GRACE_MS = 24 * 3600 * 1000  # how long a rotated-out secret keeps signing


def new_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes, base64."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(PREFIX))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,`` signature of ``body`` as sent with ``msg_id`` at ``timestamp`` (epoch seconds)."""
    mac = hmac.new(_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def headers(secrets_: Sequence[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per secret in ``webhook-signature``."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, msg_id, timestamp, body) for s in secrets_),
    }


def active(secret: str, old_secret: str | None, old_expires_at: int | None, now: int) -> list[str]:
    """The secrets to sign with at ``now`` (ms): the current one, and the previous one during its grace."""
    if old_secret and old_expires_at is not None and old_expires_at > now:
        return [secret, old_secret]
    return [secret]
