"""Who is calling: a project secret key (``Authorization: Bearer sk_…``), the admin token for
/v1/admin/*, or nobody, which is the default project only in local mode (the server listens on a
loopback address and no API key exists yet). Keys are compared by hash and never logged.

Also the per-key token bucket: a key gets ``rate_limit_per_minute`` requests a minute (the
project's, capped by the server's setting), refilled continuously.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from genloom.app import App
from genloom.errors import Forbidden, RateLimited, Unauthorized
from genloom.models import Project
from genloom.projects import DEFAULT_PROJECT, hash_key

project_key = HTTPBearer(auto_error=False, scheme_name="ProjectKey",
                         description="A project secret key: `Authorization: Bearer sk_…`")
admin_token = HTTPBearer(auto_error=False, scheme_name="AdminToken",
                         description="The server's admin token (GENLOOM_ADMIN_TOKEN)")


@dataclass(frozen=True)
class Caller:
    project: Project
    bucket: str  # the rate-limit identity: the key's hash, or "local"
    local: bool = False


def genloom(request: Request) -> App:
    app: App = request.app.state.genloom
    return app


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def local_mode(app: App) -> bool:
    return is_loopback(app.settings.host) and not await app.core.projects.any_keys()


class RateLimiter:
    """Token buckets per key, in this process (a cluster multiplies the allowance by its size)."""

    MAX_BUCKETS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, per_minute: int) -> float | None:
        """None when the request may go ahead, else the seconds until a token is due."""
        if per_minute <= 0:
            return None
        now = self.clock()
        tokens, at = self.buckets.get(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - at) * per_minute / 60.0)
        if tokens >= 1.0:
            self._put(key, tokens - 1.0, now)
            return None
        self._put(key, tokens, now)
        return (1.0 - tokens) * 60.0 / per_minute

    def _put(self, key: str, tokens: float, now: float) -> None:
        if key not in self.buckets and len(self.buckets) >= self.MAX_BUCKETS:
            self.buckets.clear()  # rare; forgetting buckets only ever allows more, never less
        self.buckets[key] = (tokens, now)


def limit_for(project: Project, server_limit: int) -> int:
    limits = [n for n in (project.rate_limit_per_minute, server_limit) if n > 0]
    return min(limits) if limits else 0


SESSION_COOKIE = "genloom_session"
CSRF_COOKIE = "genloom_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def session_key(request: Request) -> str | None:
    """The dashboard's session cookie (the key itself, HttpOnly, SameSite=Strict). A request that
    changes something must also echo the CSRF cookie in X-CSRF-Token (double submit)."""
    key = request.cookies.get(SESSION_COOKIE)
    if not key:
        return None
    if request.method not in SAFE_METHODS:
        cookie, header = request.cookies.get(CSRF_COOKIE, ""), request.headers.get("x-csrf-token", "")
        if not cookie or not hmac.compare_digest(cookie.encode(), header.encode()):
            raise Forbidden("missing or wrong X-CSRF-Token", code="csrf_failed")
    return key


async def caller(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(project_key)) -> Caller:
    """The authenticated project, rate limited per key."""
    app = genloom(request)
    if creds is None and not request.headers.get("authorization") and (cookie := session_key(request)):
        if _is(cookie, app.settings.admin_token):
            project = await app.core.projects.get(request.query_params.get("project") or DEFAULT_PROJECT)
            return _limited(request, app, Caller(project, "admin"))
        project = await app.core.projects.authenticate(cookie)
        return _limited(request, app, Caller(project, hash_key(cookie)))
    if creds is not None:
        project = await app.core.projects.authenticate(creds.credentials)
        who = Caller(project, hash_key(creds.credentials))
    elif request.headers.get("authorization"):
        raise Unauthorized("use Authorization: Bearer <secret key>")
    elif await local_mode(app):
        who = Caller(await app.core.projects.get(DEFAULT_PROJECT), "local", local=True)
    else:
        raise Unauthorized("an API key is required (Authorization: Bearer sk_…)")
    return _limited(request, app, who)


def _limited(request: Request, app: App, who: Caller) -> Caller:
    limiter: RateLimiter = request.app.state.limiter
    wait = limiter.take(who.bucket, limit_for(who.project, app.settings.rate_limit_per_minute))
    if wait is not None:
        raise RateLimited("too many requests for this key; slow down", retry_after=max(1, math.ceil(wait)))
    return who


async def admin(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(admin_token)) -> None:
    """The admin token, compared in constant time. Without a configured token the admin API is
    open in local mode only."""
    app = genloom(request)
    token = app.settings.admin_token.get_secret_value()
    if not token:
        if creds is None and not request.headers.get("authorization") and await local_mode(app):
            return
        raise Forbidden("the admin API is disabled: set GENLOOM_ADMIN_TOKEN")
    if creds is None and not request.headers.get("authorization") and (cookie := session_key(request)):
        if _is(cookie, app.settings.admin_token):
            return  # the dashboard, logged in with the admin token
        raise Forbidden("the admin token is required for this action")
    if creds is None:
        raise Unauthorized("the admin token is required (Authorization: Bearer <admin token>)")
    if _is(creds.credentials, app.settings.admin_token):
        return
    if creds.credentials.startswith("sk_"):
        await app.core.projects.authenticate(creds.credentials)  # 401 unless a valid project key
        raise Forbidden("a project key cannot use the admin API")
    raise Unauthorized("the admin token is not valid")


async def metrics_reader(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(admin_token)) -> None:
    """/metrics counts every project's jobs: it takes the metrics token (a scraper's, nothing
    else) or the admin token, compared in constant time; without one it is open in local mode only."""
    app = genloom(request)
    if creds is not None:
        if _is(creds.credentials, app.settings.metrics_token) or _is(creds.credentials, app.settings.admin_token):
            return
        raise Unauthorized("the metrics token is not valid")
    if await local_mode(app):
        return
    raise Unauthorized("metrics need GENLOOM_METRICS_TOKEN or the admin token (Authorization: Bearer <token>)")


def _is(given: str, secret: SecretStr) -> bool:
    """``given`` is the configured ``secret`` (never an unset one), compared in constant time."""
    value = secret.get_secret_value()
    return bool(value) and hmac.compare_digest(given.encode(), value.encode())
