"""Client tests run against the API tests' real server processes."""

from tests.api.conftest import admin, fake_replicate, server, tenant  # noqa: F401 - fixtures, by name
