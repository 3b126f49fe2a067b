"""schemathesis over every operation of /openapi.json with negative examples only (values that break
the documented schema: wrong types, out of range, missing required, malformed bodies): bad data is
always refused with a 4xx, never a 5xx. On a server of its own without a worker (fuzzed jobs wait in
the queue); bounded to 15 examples per operation, the coverage phase off (as in tests/api)."""

from __future__ import annotations

import base64
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection

from genloom.api import create_app
from genloom.config import Settings
from tests.api.conftest import ApiServer
from tests.conftest import DIALECTS
from tests.reliability.conftest import project, start_server

DOCUMENT = create_app(Settings(_env_file=None), background=False).openapi()
CONFIG = schemathesis.Config.from_str("""
[generation]
mode = "negative"
allow-extra-parameters = false  # unknown query parameters are ignored, as HTTP APIs do
with-security-parameters = false  # the test always sends the key: a "key missing" case would not be one

[phases.coverage]
enabled = false

[checks.negative_data_rejection]
expected-statuses = ["4XX"]
""")


def _negatable(op: dict[str, Any]) -> bool:
    """Whether an operation has anything to get wrong beyond a free-form path segment."""
    constrained = ("enum", "pattern", "minimum", "maximum", "minLength", "maxLength")
    return "requestBody" in op or any(p["in"] != "path" or any(k in p["schema"] for k in constrained)
                                      for p in op.get("parameters", []))


NEGATABLE = {(m.upper(), path) for path, ops in DOCUMENT["paths"].items() for m, op in ops.items() if _negatable(op)}
PATH_ONLY = sorted({(m.upper(), path) for path, ops in DOCUMENT["paths"].items() for m in ops} - NEGATABLE)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG).include(
    lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in NEGATABLE)
SEEN: Counter[tuple[str, int]] = Counter()  # (operation, status)
FAILED: list[str] = []


@pytest.fixture(scope="module", params=DIALECTS)
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, str]]:
    env = {"GENLOOM_RATE_LIMIT_PER_MINUTE": "0"}
    for srv in start_server(request, tmp_path_factory, "negative", env, background=False):
        yield srv, project(srv.db_url).secret_key
    if not SEEN:
        return
    statuses: Counter[int] = Counter()
    examples: Counter[int] = Counter()
    for (op, status), n in SEEN.items():
        (examples if op.startswith("(") else statuses)[status] += n
    ops = len({op for op, _ in SEEN if not op.startswith("(")})
    print(f"\nschemathesis [{request.param}]: negative examples on {ops} operations, "
          f"{sum(statuses.values())} requests -> {dict(sorted(statuses.items()))}, {len(FAILED)} failing "
          f"(plus the schema's own examples: {dict(sorted(examples.items()))}); "
          f"{len(PATH_ONLY)} operations with only free-form path segments got hostile ids instead")
    SEEN.clear()
    FAILED.clear()


@schema.parametrize()
@settings(max_examples=15, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_bad_data_is_always_4xx(case: schemathesis.Case[Any], fuzzed: tuple[ApiServer, str]) -> None:
    try:
        response = case.call_and_validate(
            base_url=fuzzed[0].url, headers={"Authorization": f"Bearer {fuzzed[1]}"}, timeout=30,
            checks=[not_a_server_error, negative_data_rejection],
        )
    except Exception:
        FAILED.append(case.operation.label)
        raise
    negative = case.meta is not None and case.meta.generation.mode.is_negative
    SEEN[(case.operation.label if negative else "(the schema's own examples)", response.status_code)] += 1
    assert response.status_code < 500


HOSTILE_IDS = ["%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..", "%00", "%ff%fe", "a" * 10_000, "%E3%82%B8%E3%83%A7%E3%83%96",
               "'%20OR%201=1--", "$%7Bjndi:ldap://x/a%7D", "%20", "0" * 40, "-1", "9" * 30]


def test_hostile_path_segments_are_4xx(fuzzed: tuple[ApiServer, str]) -> None:
    """The operations schemathesis cannot negate (their only input is a free-form path segment)."""
    srv, key = fuzzed
    statuses: Counter[int] = Counter()
    with srv.client(key) as http:
        for method, path in PATH_ONLY:
            for hostile in HOSTILE_IDS if "{" in path else [""]:
                url = re.sub(r"\{(\w+)\}", lambda m, h=hostile: "replicate" if m[1] == "provider" else h, path)
                r = http.request(method, url)
                assert r.status_code < 500, (method, url[:100], r.status_code, r.text)
                if "{" in path:
                    assert 400 <= r.status_code < 500, (method, url[:100], r.status_code, r.text)
                    assert set(r.json()["error"]) == {"code", "message", "request_id"}, r.text
                statuses[r.status_code] += 1
    print(f"\nhostile path segments on {len(PATH_ONLY)} operations: {sum(statuses.values())} requests -> "
          f"{dict(sorted(statuses.items()))}")


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CRAFTED_CURSORS = [_cursor(raw) for raw in (
    b"99999999999999999999:abc", b"-99999999999999999999:abc", b"9223372036854775808:abc", b"-1:abc",
    "\u00b2:abc".encode(), b"1e3:abc", b"1:", b"1:" + b"a" * 41, b"1:a\x00b", b"\xff\xfe:abc", b"no colon",
)] + ["!!!", "%%%", "a" * 200]


def test_crafted_cursors_are_4xx(fuzzed: tuple[ApiServer, str]) -> None:
    """List cursors are opaque to clients but parsed by the server: a forged one is 422, never a 500
    (a 20-digit time in one used to overflow SQLite's integer)."""
    srv, key = fuzzed
    with srv.client(key) as http:
        made = http.post("/v1/webhooks", json={"url": "http://93.184.216.34/hook", "enabled": False})
        assert made.status_code == 201, made.text
        lists = ["/v1/jobs", f"/v1/webhooks/{made.json()['id']}/deliveries"]
        answers = Counter()
        for path in lists:
            for cursor in CRAFTED_CURSORS:
                r = http.get(path, params={"cursor": cursor})
                assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", (path, cursor, r.text)
                answers[r.status_code] += 1
    print(f"\ncrafted list cursors: {len(CRAFTED_CURSORS)} x {len(lists)} lists -> {dict(answers)}")
