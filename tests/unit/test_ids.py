"""Ids: content addresses are stable across key order and differ when any parameter differs."""

from __future__ import annotations

import time
import uuid

from genloom.ids import canonical_json, content_address, fingerprint, new_job_id, new_lease_token


def test_content_address_is_stable_across_key_order() -> None:
    a = content_address("prj_1", {"image": "https://x/a.png", "prompt": "wave", "opts": {"fps": 24, "seed": 1}})
    b = content_address("prj_1", {"opts": {"seed": 1, "fps": 24}, "prompt": "wave", "image": "https://x/a.png"})
    assert a == b
    assert a.startswith("asset_")
    assert len(a) == len("asset_") + 24


def test_content_address_is_deterministic_across_calls() -> None:
    params = {"prompt": "ünïcode ✓", "n": 3}
    assert content_address("p", params) == content_address("p", dict(params))


def test_content_address_differs_when_a_param_differs() -> None:
    base = {"prompt": "wave", "seed": 1, "opts": {"fps": 24}}
    a = content_address("prj_1", base)
    assert content_address("prj_1", base | {"seed": 2}) != a
    assert content_address("prj_1", base | {"prompt": "Wave"}) != a
    assert content_address("prj_1", base | {"opts": {"fps": 25}}) != a
    assert content_address("prj_1", base | {"extra": None}) != a
    assert content_address("prj_1", {k: v for k, v in base.items() if k != "seed"}) != a
    assert content_address("prj_1", base | {"seed": "1"}) != a  # types matter


def test_content_address_is_scoped_to_the_project() -> None:
    assert content_address("prj_1", {"a": 1}) != content_address("prj_2", {"a": 1})


def test_content_address_prefix() -> None:
    assert content_address("p", {"a": 1}, prefix="job_").startswith("job_")
    assert content_address("p", {"a": 1}, prefix="job_")[4:] == content_address("p", {"a": 1})[6:]


def test_canonical_json_and_fingerprint() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == '{"a":[1,{"c":3,"d":2}],"b":1}'
    assert fingerprint({"b": 1, "a": 2}) == fingerprint({"a": 2, "b": 1})
    assert len(fingerprint({})) == 64


def test_random_ids_are_distinct() -> None:
    assert len({new_job_id() for _ in range(1000)}) == 1000
    assert len({new_lease_token() for _ in range(1000)}) == 1000
    assert all(len(new_job_id()) <= 40 for _ in range(10))  # fits jobs.id
    assert all(len(new_lease_token()) <= 32 for _ in range(10))  # fits jobs.lease_token


def test_job_ids_are_uuid7_in_creation_order() -> None:
    """Time first, so indexes keyed by job id grow at their end; 74 random bits after it."""
    first = new_job_id()
    time.sleep(0.002)
    later = [new_job_id() for _ in range(100)]
    assert all(first < job_id for job_id in later)
    parsed = uuid.UUID(first)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert abs((parsed.int >> 80) - time.time_ns() // 1_000_000) < 5_000  # its creation time, in ms
    assert len({job_id[12:] for job_id in later}) == 100  # the random part differs within a millisecond
