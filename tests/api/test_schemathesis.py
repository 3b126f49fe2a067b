"""Property-based checks of every operation against /openapi.json (schemathesis), on a server of
its own without a worker (fuzzed jobs just wait in the queue): no 5xx, and every answer matches
the schema it documents. Bounded to 20 examples per operation to keep the suite quick.

The schema is built in this process (the same code the server runs; a test checks the server
serves the identical document), because schemathesis' fixture-based loader does not work with
this pytest (it sets ``Function._nodeid``, which pytest 9 no longer has).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from genloom.api import create_app
from genloom.config import Settings
from tests.api.conftest import ApiServer, make_project, new_db
from tests.conftest import DIALECTS


@pytest.fixture(scope="module", params=DIALECTS)
def fuzzed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, str]]:
    root: Path = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    url, drop = new_db(request, request.param, root)
    srv = ApiServer(url, root / "data", background=False,
                    env={"GENLOOM_ADMIN_TOKEN": "adm_fuzz_token_0123456789", "GENLOOM_RATE_LIMIT_PER_MINUTE": "0"}
                    ).wait_ready()
    keys = make_project(url, rate_limit_per_minute=1_000_000)
    yield srv, keys.secret_key
    srv.stop()
    drop()


DOCUMENT = create_app(Settings(_env_file=None), background=False).openapi()
# Examples and fuzzing (positive and negative), max_examples each; the coverage phase (hundreds of
# boundary cases per operation, unbounded by max_examples) is left to occasional manual runs.
CONFIG = schemathesis.Config.from_str("[phases.coverage]\nenabled = false\n")
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_server_serves_this_document(fuzzed: tuple[ApiServer, str]) -> None:
    with fuzzed[0].client() as http:
        assert http.get("/openapi.json").json() == DOCUMENT


@schema.parametrize()
@settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_api(case: schemathesis.Case[Any], fuzzed: tuple[ApiServer, str]) -> None:
    case.call_and_validate(
        base_url=fuzzed[0].url, headers={"Authorization": f"Bearer {fuzzed[1]}"}, timeout=30,
        checks=[not_a_server_error, response_schema_conformance],
    )
