"""CLI tests share the real S3-protocol server of the storage tests."""

from tests.storage.conftest import s3_server  # noqa: F401 - a fixture, by name
