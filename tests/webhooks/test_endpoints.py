"""The endpoints service: CRUD, event filters, SSRF refusal, secrets shown once, rotation, and the
project's job webhook secret."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from genloom.errors import InvalidInput, NotFound, UnsafeUrl
from genloom.store.schema import webhook_endpoints
from genloom.webhooks.endpoints import Endpoints
from genloom.webhooks.outbox import DEFAULT_EVENTS
from tests.store.helpers import make_project

pytestmark = pytest.mark.anyio


async def test_create_list_get_update_delete(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    other = await make_project(core, billing=False)
    created = await endpoints.create(project.id, "http://127.0.0.1:9/hook")
    ep = created.endpoint
    assert created.secret.startswith("whsec_")
    assert created.secret not in repr(created) and not hasattr(ep, "secret")
    assert ep.events == list(DEFAULT_EVENTS) and ep.enabled and ep.disabled_reason is None
    assert [e.id for e in await endpoints.list(project.id)] == [ep.id]
    assert await endpoints.list(other.id) == []
    assert await endpoints.get(project.id, ep.id) == ep
    with pytest.raises(NotFound):
        await endpoints.get(other.id, ep.id)  # another project's endpoint does not exist for it

    changed = await endpoints.update(project.id, ep.id, url="http://127.0.0.1:10/x",
                                     events=["job.failed", "job.started", "job.failed"], enabled=False)
    assert (changed.url, changed.events, changed.enabled) == ("http://127.0.0.1:10/x", ["job.failed", "job.started"],
                                                              False)
    assert changed.disabled_reason == "disabled by request"
    enabled = await endpoints.update(project.id, ep.id, enabled=True)
    assert enabled.enabled and enabled.disabled_reason is None

    await endpoints.delete(project.id, ep.id)
    with pytest.raises(NotFound):
        await endpoints.get(project.id, ep.id)
    with pytest.raises(NotFound):
        await endpoints.delete(project.id, ep.id)


@pytest.mark.parametrize("events", [[], ["job.nope"], "job.completed"])
async def test_filters_must_name_known_event_types(core: Any, endpoints: Endpoints, events: Any) -> None:
    project = await make_project(core, billing=False)
    with pytest.raises(InvalidInput):
        await endpoints.create(project.id, "http://127.0.0.1:9/hook", events=events)


@pytest.mark.parametrize("url", [
    "http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[::1]/hook", "http://localhost/hook",
    "ftp://127.0.0.1/hook", "http://user:pw@127.0.0.1/hook", "http://0xa9.254.169.254/",
])
async def test_urls_must_pass_the_address_policy(core: Any, endpoints: Endpoints, url: str) -> None:
    project = await make_project(core, billing=False)
    with pytest.raises(UnsafeUrl):
        await endpoints.create(project.id, url)
    created = await endpoints.create(project.id, "http://127.0.0.1:9/ok")
    with pytest.raises(UnsafeUrl):
        await endpoints.update(project.id, created.endpoint.id, url=url)


async def test_rotation_keeps_the_old_secret_for_a_day(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    created = await endpoints.create(project.id, "http://127.0.0.1:9/hook")
    new = await endpoints.rotate_secret(project.id, created.endpoint.id)
    assert new.startswith("whsec_") and new != created.secret
    async with core.db.read() as conn:
        row = (await conn.execute(select(webhook_endpoints))).mappings().one()
    assert (row["secret"], row["old_secret"]) == (new, created.secret)
    ep = await endpoints.get(project.id, created.endpoint.id)
    assert ep.rotating_until is not None and ep.rotating_until - ep.updated_at == 24 * 3600 * 1000


async def test_the_project_job_secret_is_created_once_and_rotates(core: Any, endpoints: Endpoints) -> None:
    project = await make_project(core, billing=False)
    first = await endpoints.project_secret(project.id)
    assert first.startswith("whsec_") and await endpoints.project_secret(project.id) == first
    rotated = await endpoints.rotate_project_secret(project.id)
    assert rotated != first and await endpoints.project_secret(project.id) == rotated
