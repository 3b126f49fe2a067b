"""The dashboard in a real browser (Playwright driving Debian's Chromium) against a real server:
log in, watch a job finish live, play its video, cancel a running job, retry a failed one as admin.
A screenshot of each page is saved under test-artifacts/dashboard/."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import ADMIN_TOKEN, ApiServer, new_db
from tests.api.conftest import make_project as _make_project

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is missing at {CHROMIUM}; .ci/run installs Debian's chromium in CI")
        pytest.skip(reason=f"Chromium is not installed ({CHROMIUM}); `apt-get install chromium` to run them")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        flags = ["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
        b = pw.chromium.launch(executable_path=CHROMIUM, args=flags)
        yield b
        b.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp(f"dash-{request.param}")
    url, drop = new_db(request, request.param, root)
    env = {"GENLOOM_ADMIN_TOKEN": ADMIN_TOKEN, "GENLOOM_FETCH_ALLOW_NETWORKS": '["127.0.0.0/8"]'}
    srv = ApiServer(url, root / "data", env=env).wait_ready()
    yield srv
    srv.stop()
    drop()


def make_project(db_url: str) -> Any:
    """Made on another thread: Playwright's sync API keeps an event loop running on this one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_make_project, db_url).result()


def until(page: Any, predicate: str, within: float = 15.0) -> None:
    """Poll a JS predicate (wait_for_function would need 'unsafe-eval', which the page's CSP forbids)."""
    deadline = time.monotonic() + within
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"never true: {predicate}"
        page.wait_for_timeout(50)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def login(page: Any, site: ApiServer, key: str) -> None:
    page.goto(f"{site.url}/dashboard")
    page.get_by_label("Key or token").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#jobs:not([hidden])")


def csrf(page: Any) -> str:
    return str(next(c["value"] for c in page.context.cookies() if c["name"] == "genloom_csrf"))


def test_a_customer_watches_a_job_finish_and_plays_it(browser: Any, site: ApiServer, request: Any) -> None:
    keys = make_project(site.db_url)
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone-sized screen
    page.goto(f"{site.url}/dashboard")
    page.get_by_label("Key or token").fill("sk_wrong")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#login-error:not([hidden])")
    login(page, site, keys.secret_key)
    with site.client(keys.secret_key) as http:
        job = http.post("/v1/jobs", json={"type": "motion", "input": {"src": "sample", "dur": 1, "height": 240}}).json()
    row = page.locator(f"#row-{job['id']}")
    row.wait_for(timeout=15_000)  # it appears without a reload ...
    page.wait_for_selector(f"#row-{job['id']}[data-status=completed]", timeout=30_000)  # ... and finishes live
    page.wait_for_selector(".card[data-status=completed] b:text-is('1')", timeout=10_000)  # the counts follow
    shot(page, f"jobs-{request.node.callspec.id}")
    row.get_by_role("link").click()
    page.wait_for_selector("#timeline li[data-type=completed]", timeout=15_000)
    video = page.locator("#player")
    video.wait_for(state="visible")
    until(page, "() => document.getElementById('player').readyState >= 2")
    page.evaluate("() => document.getElementById('player').play()")
    until(page, "() => document.getElementById('player').currentTime > 0.2")
    assert page.locator("#ledger tr").count() == 0  # an unmetered project: no ledger rows
    shot(page, f"job-{request.node.callspec.id}")
    page.close()


def test_cancel_a_running_job_from_its_page(browser: Any, site: ApiServer, request: Any) -> None:
    keys = make_project(site.db_url)
    page = browser.new_page()
    login(page, site, keys.secret_key)
    with site.client(keys.secret_key) as http:
        job = http.post("/v1/jobs", json={"type": "video", "input": {"subject": "slow", "paragraphs": 6}}).json()
        page.goto(f"{site.url}/dashboard#/jobs/{job['id']}")
        page.wait_for_selector("#timeline li[data-type=started]", timeout=20_000)
        page.get_by_role("button", name="Cancel").click()
        page.wait_for_selector("dd[data-fact=status]:text('cancelled')", timeout=20_000)
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert page.locator("#cancel").is_disabled()
    shot(page, f"cancelled-{request.node.callspec.id}")
    page.close()


def test_admin_retries_a_failed_job_and_refusals_are_shown(browser: Any, site: ApiServer, request: Any) -> None:
    make_project(site.db_url)  # a site with keys shows the login form (without any, loopback is open)
    page = browser.new_page()
    login(page, site, ADMIN_TOKEN)
    created = page.request.post(f"{site.url}/v1/jobs", headers={"X-CSRF-Token": csrf(page)},
                                data={"type": "scrape", "input": {"url": "http://127.0.0.1:9/down"}})
    assert created.status == 201, created.text()
    job_id = created.json()["id"]
    forged = page.request.post(f"{site.url}/v1/jobs/{job_id}/cancel")  # no CSRF header: refused
    assert forged.status == 403
    deadline = time.monotonic() + 20
    while page.request.get(f"{site.url}/v1/jobs/{job_id}").json()["status"] != "failed":
        assert time.monotonic() < deadline, "the scrape of a closed port never failed"
        page.wait_for_timeout(50)
    # Hold the side panels' request: the job page renders the job (Retry enabled) before they load,
    # and a click in that gap must act on this job (it once fell on no handler at all).
    held: list[Any] = []
    page.route("**/dashboard/api/jobs/*/ledger", lambda route: held.append(route))
    page.goto(f"{site.url}/dashboard#/jobs/{job_id}")
    page.wait_for_selector("dd[data-fact=status]:text('failed')", timeout=20_000)
    page.get_by_role("button", name="Retry (admin)").click()
    page.wait_for_selector("#action-result:text('now')", timeout=10_000)
    assert held, "the side panels loaded before the click: the gap was not exercised"
    for route in held:
        route.continue_()
    page.unroute("**/dashboard/api/jobs/*/ledger")
    page.wait_for_selector("#timeline li[data-type=started] >> nth=1", timeout=20_000)  # a second round ran
    page.wait_for_selector("dd[data-fact=status]:text('failed')", timeout=20_000)
    # A terminal job's Cancel is disabled; enable and press it in one step (a late event re-renders
    # the job and disables it again) to see the server's refusal shown, not hidden.
    page.evaluate("() => { const b = document.getElementById('cancel'); b.disabled = false; b.click(); }")
    page.wait_for_selector("#action-result.refused", timeout=10_000)
    assert "invalid_transition" in page.locator("#action-result").inner_text()
    shot(page, f"retried-{request.node.callspec.id}")
    page.goto(f"{site.url}/dashboard#/webhooks")
    page.wait_for_selector("#webhooks:not([hidden])")
    shot(page, f"webhooks-{request.node.callspec.id}")
    page.close()
