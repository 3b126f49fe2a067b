"""Inbound callback verification: Standard Webhooks signatures, tolerance, rotation, forgeries."""

from __future__ import annotations

import base64
import json

import pytest
from standardwebhooks.webhooks import Webhook

from genloom.errors import InvalidInput, Unauthorized
from genloom.providers.callbacks import sign_callback, verify_callback, webhook_id

OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
NOW = 1_767_225_600
BODY = json.dumps({"id": "p1", "status": "succeeded", "output": "https://x/clip.mp4"}).encode()


def signed(body: bytes = BODY, secret: str = NEW, *, at: float = NOW, msg_id: str = "msg_1") -> dict[str, str]:
    return sign_callback(body, secret, msg_id=msg_id, timestamp=at)


def refused(headers: dict[str, str], body: bytes = BODY, secrets: list[str] | None = None, **kw: float) -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        verify_callback(headers, body, secrets or [NEW], now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_signature"
    assert caught.value.status == 401
    return caught.value


def test_valid_callback_returns_the_payload() -> None:
    assert verify_callback(signed(), BODY, [NEW], now=NOW) == json.loads(BODY)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.title(): v for k, v in signed().items()}
    assert verify_callback(headers, BODY, [NEW], now=NOW)["id"] == "p1"


def test_the_official_library_accepts_what_we_sign() -> None:
    headers = sign_callback(BODY, NEW, msg_id="msg_interop")  # signed now
    assert Webhook(NEW).verify(BODY, headers) == json.loads(BODY)
    assert verify_callback(headers, BODY, [NEW])["status"] == "succeeded"  # default clock: time.time()


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(missing: str) -> None:
    headers = signed()
    del headers[missing]
    refused(headers)


@pytest.mark.parametrize("blank", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_blank_header_is_refused(blank: str) -> None:
    refused(signed() | {blank: "  "})


def test_no_headers_at_all_is_refused() -> None:
    refused({})


def test_forged_signature_is_refused() -> None:
    forged = "v1," + base64.b64encode(b"x" * 32).decode()
    refused(signed() | {"webhook-signature": forged})


@pytest.mark.parametrize("header", ["v1", "v1,", "v1,!!!not-base64!!!", "garbage", ",,,", "v1,a=b=c"])
def test_malformed_signature_header_is_refused_not_crashed(header: str) -> None:
    refused(signed() | {"webhook-signature": header})


def test_signature_under_another_scheme_version_is_ignored() -> None:
    good = signed()["webhook-signature"].partition(",")[2]
    refused(signed() | {"webhook-signature": f"v1a,{good}"})


def test_altered_body_is_refused() -> None:
    refused(signed(), BODY.replace(b"succeeded", b"failed"))


def test_altered_webhook_id_is_refused() -> None:
    refused(signed() | {"webhook-id": "msg_2"})


def test_altered_timestamp_is_refused() -> None:
    refused(signed() | {"webhook-timestamp": str(NOW + 1)})


def test_stale_timestamp_is_refused() -> None:
    refused(signed(at=NOW - 301))
    assert verify_callback(signed(at=NOW - 300), BODY, [NEW], now=NOW)  # the boundary is inside


def test_future_timestamp_is_refused() -> None:
    refused(signed(at=NOW + 301))
    assert verify_callback(signed(at=NOW + 300), BODY, [NEW], now=NOW)


def test_tolerance_is_configurable() -> None:
    refused(signed(at=NOW - 31), tolerance_s=30)
    assert verify_callback(signed(at=NOW - 29), BODY, [NEW], tolerance_s=30, now=NOW)


@pytest.mark.parametrize("stamp", ["abc", "1.767e9", "-5", "1767225600.0", "99999999999999"])
def test_malformed_timestamp_is_refused(stamp: str) -> None:
    refused(signed() | {"webhook-timestamp": stamp})


def test_wrong_secret_is_refused() -> None:
    refused(signed(secret=OLD), secrets=[NEW])


def test_rotation_accepts_either_configured_secret() -> None:
    both = [NEW, OLD]
    assert verify_callback(signed(secret=OLD), BODY, both, now=NOW)["id"] == "p1"
    assert verify_callback(signed(secret=NEW), BODY, both, now=NOW)["id"] == "p1"


def test_retired_secret_is_refused() -> None:
    refused(signed(secret=OLD), secrets=[NEW])  # OLD left the list after rotation


def test_several_signatures_pass_when_one_matches() -> None:
    bad = "v1," + base64.b64encode(b"y" * 32).decode()
    old_sig = signed(secret=OLD)["webhook-signature"]
    headers = signed() | {"webhook-signature": f"{bad} {old_sig}"}
    assert verify_callback(headers, BODY, [OLD], now=NOW)["id"] == "p1"


def test_non_utf8_body_is_refused() -> None:
    refused(signed(), b"\xff\xfe\x00")


def test_signed_body_that_is_not_an_object_is_invalid_input() -> None:
    for body in (b"[1, 2]", b"not json"):
        with pytest.raises(InvalidInput):
            verify_callback(signed(body), body, [NEW], now=NOW)


@pytest.mark.parametrize("secrets", [[], NEW, ["whsec_"]])
def test_misconfigured_secrets_are_a_configuration_error(secrets: list[str] | str) -> None:
    with pytest.raises(ValueError):
        verify_callback(signed(), BODY, secrets, now=NOW)


def test_webhook_id_extracts_the_replay_key() -> None:
    assert webhook_id(signed(msg_id="msg_abc")) == "msg_abc"
    assert webhook_id({"Webhook-Id": " msg_x "}) == "msg_x"
    assert webhook_id({}) is None
    assert webhook_id({"webhook-id": ""}) is None


def test_refusal_says_why_without_echoing_secrets() -> None:
    error = refused(signed(secret=OLD))
    assert error.details["reason"] == "no matching signature"
    assert NEW not in str(error) and OLD not in str(error)
