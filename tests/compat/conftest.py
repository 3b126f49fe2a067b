"""The compatibility layers run against the same real server processes as the API tests."""

from collections.abc import Iterator

import pytest

from tests.api.conftest import (  # noqa: F401 - fixtures, by name
    ApiServer,
    Tenant,
    admin,
    fake_replicate,
    make_project,
    other,
    replicate_script,
    server,
    tenant,
)


@pytest.fixture
def billed(server: ApiServer) -> Iterator[Tenant]:  # noqa: F811 - the imported fixture, by name
    """A metered project: jobs are charged to their user's credits."""
    keys = make_project(server.db_url, billing=True)
    with server.client(keys.secret_key) as http:
        yield Tenant(server, keys, http)
