"""The database goes away under a running server: 503 unavailable with Retry-After, never a 500;
the process stays up (healthz) and says it is not ready (readyz)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from genloom.store.migrate import head
from tests.api.conftest import METRICS_TOKEN, ApiServer, error_of, make_project, motion
from tests.dbs import PgTemplates, pg_admin


@pytest.mark.parametrize("own_db", ["postgresql"], indirect=True)  # dropping a database is deterministic there
def test_database_gone_is_503(own_db: str, request: pytest.FixtureRequest, spawn: Callable[..., ApiServer]) -> None:
    url = own_db
    srv = spawn(url)
    keys = make_project(url)
    with srv.client(keys.secret_key) as http:
        job = http.post("/v1/jobs", json=motion()).json()
        assert http.get("/readyz").status_code == 200
        pg_admin(url, "UPDATE alembic_version SET version_num = 'older'")  # the schema is behind the code
        behind = http.get("/readyz")
        assert behind.status_code == 503 and "migration" in error_of(behind)["message"]
        assert http.get(f"/v1/jobs/{job['id']}").status_code == 200  # serving goes on; readiness says why not
        pg_admin(url, f"UPDATE alembic_version SET version_num = '{head()}'")
        assert http.get("/readyz").status_code == 200
        templates: PgTemplates = request.getfixturevalue("pg_templates")
        templates.drop(url)  # WITH (FORCE): the server's connections are cut, new ones refused
        for method, path, body in [
            ("GET", "/v1/jobs", None), ("GET", f"/v1/jobs/{job['id']}", None),
            ("POST", "/v1/jobs", motion()), ("GET", f"/v1/jobs/{job['id']}/events", None),
            ("GET", "/v1/credits", None), ("GET", "/readyz", None), ("GET", "/metrics", None),
        ]:
            token = {"Authorization": f"Bearer {METRICS_TOKEN}"} if path == "/metrics" else {}
            r = http.request(method, path, json=body, headers=token)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert error_of(r)["code"] == "unavailable"
            assert int(r.headers["retry-after"]) > 0
        assert http.get("/healthz").status_code == 200
    assert srv.proc.poll() is None
