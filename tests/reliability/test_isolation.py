"""Tenant isolation: with project B's credentials (secret key, public key, dashboard cookie) on every
route that names a job or a webhook resource (/v1, the Motioness, MoneyPrinter and CutX layers, the
dashboard), project A's jobs, events, results, ledger, assets, endpoints and deliveries are 404 (403
on the admin routes), B's own lists, stats, credits and live feed hold none of A's rows, and a repeat
of A's idempotency keys or proxy URL makes B's own job. No response carries a byte of A's data: not
a job id, an input string, a user, a key, an endpoint's url or secret."""

from __future__ import annotations

import secrets
import time
from collections import Counter

import httpx

from tests.api.conftest import ApiServer, Tenant
from tests.api.sse import messages
from tests.reliability.conftest import project
from tests.reliability.listeners import listening


def test_one_projects_credentials_reach_nothing_of_another(billed: Tenant, other: Tenant, admin: httpx.Client
                                                           ) -> None:
    with listening({"/hook": (b"ok", "text/plain")}) as receiver:
        isolation(billed, other, admin, f"http://127.0.0.1:{receiver.port}/hook")


def isolation(a: Tenant, b: Tenant, admin: httpx.Client, hook: str) -> None:
    server = a.server
    mark = secrets.token_hex(6)
    user, prompt, name, subject = f"victim-user-{mark}", f"victim-prompt-{mark}", f"victim-name-{mark}", f"vs-{mark}"
    key1, key2 = f"victim-key-{mark}", f"victim-cutx-{mark}"
    for who in (user, ""):  # MoneyPrinter jobs have no user: the project's "" user pays
        assert admin.post("/v1/admin/credits", json={"project_id": a.project_id, "user": who, "amount": 100}
                          ).status_code == 200
    made = a.http.post("/v1/webhooks", json={"url": hook})
    assert made.status_code == 201, made.text
    endpoint, endpoint_secret = made.json()["id"], made.json()["secret"]
    motion_body = {"type": "motion", "input": {"src": "sample", "dur": 1, "height": 240, "prompt": prompt},
                   "user": user, "idempotency_key": key1}
    motion = a.create(motion_body)
    cutx_body = {"product_name": name, "user_id": user, "idempotency_key": key2}
    cutx = a.http.post("/api/generate/copy", json=cutx_body).json()
    mp = a.http.post("/api/jobs", json={"videoSubject": subject}).json()["job"]
    assert a.http.post(f"/api/jobs/{mp['id']}/cancel").status_code == 200
    done = a.wait(motion["id"], within=60)
    assert done["status"] == "completed" and a.http.get(f"/v1/jobs/{motion['id']}/result").status_code == 200
    a.wait(cutx["job_id"])
    ids = [motion["id"], cutx["job_id"], mp["id"]]
    deadline = time.monotonic() + 15
    while not (deliveries := a.http.get(f"/v1/webhooks/{endpoint}/deliveries").json()["data"]):
        assert time.monotonic() < deadline, "A's endpoint never got a delivery"
        time.sleep(0.1)
    delivery = deliveries[0]["id"]
    assert a.http.get(f"/dashboard/api/jobs/{motion['id']}/ledger",
                      headers={"Cookie": f"genloom_session={a.keys.secret_key}"}).json()["data"]
    secret_strings = [*ids, user, prompt, name, subject, key1, key2, a.project_id, a.keys.public_key,
                      a.keys.secret_key, endpoint, endpoint_secret, delivery, hook]

    bk, bpk = b.keys.secret_key, b.keys.public_key
    cookie = {"Cookie": f"genloom_session={bk}"}
    sse = {"Accept": "text/event-stream"}
    statuses: Counter[int] = Counter()
    routes: set[str] = set()
    n = 0

    def check(route: str, r: httpx.Response, expected: int | set[int], echo: tuple[str, ...] = ()) -> httpx.Response:
        """``echo``: what B itself sent (A's user, key or prompt, typed by B), which B's answer may repeat."""
        nonlocal n
        n += 1
        routes.add(route)
        statuses[r.status_code] += 1
        allowed = {expected} if isinstance(expected, int) else expected
        assert r.status_code in allowed, (route, r.status_code, r.text)
        haystack = r.text + "\n" + "\n".join(f"{k}: {v}" for k, v in r.headers.items())
        leaked = [s for s in secret_strings if s in haystack and s not in echo]
        assert not leaked, (route, leaked, r.text[:300])
        return r

    with server.client(bk) as http, httpx.Client(base_url=server.url, timeout=30, trust_env=False) as anon:
        for job_id in ids:
            check("GET /v1/jobs/{id}", http.get(f"/v1/jobs/{job_id}"), 404)
            check("GET /v1/jobs/{id} (dashboard cookie)", anon.get(f"/v1/jobs/{job_id}", headers=cookie), 404)
            check("GET /v1/jobs/{id}/events", http.get(f"/v1/jobs/{job_id}/events"), 404)
            check("GET /v1/jobs/{id}/events (SSE)", http.get(f"/v1/jobs/{job_id}/events", headers=sse), 404)
            check("GET /v1/jobs/{id}/events (SSE, Last-Event-ID)",
                  http.get(f"/v1/jobs/{job_id}/events", headers=sse | {"Last-Event-ID": "0"}), 404)
            check("GET /v1/jobs/{id}/result", http.get(f"/v1/jobs/{job_id}/result"), 404)
            check("GET /v1/jobs/{id}/result (Range)", http.get(f"/v1/jobs/{job_id}/result",
                                                              headers={"Range": "bytes=0-99"}), 404)
            check("HEAD /v1/jobs/{id}/result", http.head(f"/v1/jobs/{job_id}/result"), 404)
            check("POST /v1/jobs/{id}/cancel", http.post(f"/v1/jobs/{job_id}/cancel"), 404)
            check("POST /v1/admin/jobs/{id}/retry (project key)", http.post(f"/v1/admin/jobs/{job_id}/retry"), 403)
            check("GET /api/jobs/{id}", http.get(f"/api/jobs/{job_id}"), 404)
            check("POST /api/jobs/{id}/cancel", http.post(f"/api/jobs/{job_id}/cancel"), 404)
            check("GET /api/jobs/{id}/events", http.get(f"/api/jobs/{job_id}/events"), 404)
            check("GET /api/jobs/{id}/events (SSE)", http.get(f"/api/jobs/{job_id}/events", headers=sse), 404)
            check("POST /api/admin/jobs/{id}/retry (project key)", http.post(f"/api/admin/jobs/{job_id}/retry"), 403)
            check("GET /api/assets/{id} (secret key)", http.get(f"/api/assets/{job_id}"), 404)
            check("GET /api/assets/{id}?pk= (public key)", anon.get(f"/api/assets/{job_id}", params={"pk": bpk}), 404)
            check("GET /v1/{pk}/events/{id}", anon.get(f"/v1/{bpk}/events/{job_id}", headers=sse), 404)
            check("GET /v1/{pk}/events/{id} (Last-Event-ID)",
                  anon.get(f"/v1/{bpk}/events/{job_id}", headers=sse | {"Last-Event-ID": "1"}), 404)
            check("GET /dashboard/api/jobs/{id}/ledger", anon.get(f"/dashboard/api/jobs/{job_id}/ledger",
                                                                 headers=cookie), 404)
            check("GET /dashboard/api/jobs/{id}/deliveries", anon.get(f"/dashboard/api/jobs/{job_id}/deliveries",
                                                                     headers=cookie), 404)

        for method, path, body in [
            ("GET", f"/v1/webhooks/{endpoint}", None), ("PATCH", f"/v1/webhooks/{endpoint}", {"enabled": False}),
            ("DELETE", f"/v1/webhooks/{endpoint}", None), ("POST", f"/v1/webhooks/{endpoint}/rotate", None),
            ("GET", f"/v1/webhooks/{endpoint}/deliveries", None),
            ("POST", f"/v1/webhooks/{endpoint}/replay", {"from": "2000-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z",
                                                         "statuses": ["dead", "delivered"]}),
            ("GET", f"/v1/webhooks/deliveries/{delivery}/attempts", None),
            ("POST", f"/v1/webhooks/deliveries/{delivery}/replay", None),
        ]:
            route = f"{method} " + path.replace(endpoint, "{endpoint_id}").replace(delivery, "{delivery_id}")
            check(route, http.request(method, path, json=body), 404)
        check("GET /v1/webhooks", http.get("/v1/webhooks"), 200)
        assert http.get("/v1/webhooks").json()["data"] == []

        # B's own views: none of A's rows.
        check("GET /v1/jobs", http.get("/v1/jobs", params={"limit": 200}), 200)
        check("GET /v1/jobs?user=", http.get("/v1/jobs", params={"user": user}), 200)
        assert http.get("/v1/jobs", params={"user": user}).json()["data"] == []
        credits = check("GET /v1/credits?user=", http.get("/v1/credits", params={"user": user}), 200,
                        echo=(user,)).json()
        assert credits["balance"] == 0 and credits["ledger"] == []
        me = check("GET /dashboard/api/me?project=A", anon.get("/dashboard/api/me", headers=cookie,
                                                              params={"project": a.project_id}), 200)
        assert me.json()["project_id"] == b.project_id  # ?project= is the admin's, not a key's
        listed = check("GET /v1/jobs?project=A (cookie)", anon.get("/v1/jobs", headers=cookie,
                                                                   params={"project": a.project_id}), 200)
        assert listed.json()["data"] == []
        check("POST /v1/admin/credits (project key)", http.post("/v1/admin/credits", json={
            "project_id": a.project_id, "user": user, "amount": 1_000_000}), 403)
        # Repeats of A's idempotency keys and proxy URL: B's own new jobs, never A's.
        b_motion = check("POST /v1/jobs (A's idempotency key and user)", http.post("/v1/jobs", json=motion_body),
                         201, echo=(user, prompt, key1)).json()
        b_cutx = check("POST /api/generate/copy (A's idempotency key and user)",
                       http.post("/api/generate/copy", json=cutx_body), 201, echo=(user, name, key2)).json()
        params = {"src": "sample", "dur": "1", "prompt": prompt}
        proxied = check("GET /v1/{pk}/video (A's asset parameters)", anon.get(f"/v1/{bpk}/video", params=params),
                        202, echo=(prompt,)).json()
        b_ids = [b_motion["id"], b_cutx["job_id"], proxied["asset_id"]]
        for job_id in b_ids:
            http.post(f"/v1/jobs/{job_id}/cancel")
        stats = check("GET /dashboard/api/stats", anon.get("/dashboard/api/stats", headers=cookie), 200).json()
        b_jobs = http.get("/v1/jobs", params={"limit": 200}).json()["data"]
        assert sum(stats["counts"].values()) == len(b_jobs) == len(b_ids)

        # The live feed: A's events never reach B's stream, B's own do.
        fed: list[str] = []
        with anon.stream("GET", "/dashboard/feed", headers=cookie, timeout=20) as feed:
            a_job = a.http.post("/v1/jobs", json={"type": "copy", "input": {"name": name}}).json()["id"]
            secret_strings.append(a_job)
            a.wait(a_job)
            b_job = http.post("/v1/jobs", json={"type": "copy", "input": {"name": "mine"}}).json()["id"]
            deadline = time.monotonic() + 15
            for m in messages(feed):
                fed.append(m.data)
                if b_job in m.data or time.monotonic() > deadline:
                    break
        assert any(b_job in d for d in fed) and not any(s in d for d in fed for s in secret_strings), fed
        n, routes = n + 1, routes | {"GET /dashboard/feed"}

    # A still sees its own, unchanged.
    assert a.job(motion["id"])["status"] == "completed" and a.job(mp["id"])["status"] == "cancelled"
    assert a.http.get("/v1/credits", params={"user": user}).json()["balance"] == 100 - 10 - 1  # motion + copy
    ep = a.http.get(f"/v1/webhooks/{endpoint}").json()
    assert ep["enabled"] is True and ep["url"] == hook
    assert a.http.get(f"/v1/webhooks/deliveries/{delivery}/attempts").status_code == 200
    print(f"\ntenant isolation: {n} requests with project B's credentials on {len(ids)} of A's jobs, its webhook "
          f"endpoint and a delivery, over {len(routes)} routes -> {dict(sorted(statuses.items()))}; bytes of "
          f"A's data in any answer (ids, inputs, user, keys, url, secret): 0; B's feed carried {len(fed)} "
          "messages, none of A's")


def test_a_project_without_allowed_origins_cannot_proxy_another_projects_sources(server: ApiServer) -> None:
    """The Motioness public key is public: it only ever creates its own project's assets, from its own
    allowed origins."""
    victim = project(server.db_url, allowed_origins=["https://images.victim.example"])
    stranger = project(server.db_url)
    r = httpx.get(f"{server.url}/v1/{stranger.public_key}/video", trust_env=False, timeout=30,
                  params={"src": "https://images.victim.example/private.jpg"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert victim.project.id not in r.text and victim.public_key not in r.text
