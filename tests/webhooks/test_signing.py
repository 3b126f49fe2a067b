"""Outbound signatures against the official standardwebhooks library, and Retry-After parsing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from genloom.webhooks import signing
from genloom.webhooks.dispatcher import retry_after


def test_new_secrets_are_whsec_and_distinct() -> None:
    a, b = signing.new_secret(), signing.new_secret()
    assert a.startswith("whsec_") and b.startswith("whsec_") and a != b
    Webhook(a)  # the library accepts the format


def test_a_signature_verifies_with_the_library() -> None:
    secret = signing.new_secret()
    body = b'{"type":"job.completed","data":{"id":"j1","note":"\xc3\xa9"}}'
    headers = signing.headers([secret], "msg_1", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["data"]["id"] == "j1"
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"j1", b"j2"), headers)


def test_during_a_rotation_both_secrets_verify() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    now = 1_000_000
    keys = signing.active(new, old, now + 1, now)
    assert keys == [new, old]
    headers = signing.headers(keys, "msg_2", int(time.time()), b"{}")
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(b"{}", headers)
    Webhook(new).verify(b"{}", headers)
    assert signing.active(new, old, now, now) == [new]  # the grace is over
    assert signing.active(new, None, None, now) == [new]


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after("7", now) == 7.0
    assert retry_after(None, now) is None
    assert retry_after("soon", now) is None
    later = now + timedelta(seconds=90)
    assert retry_after(later.strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 90.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 0.0
