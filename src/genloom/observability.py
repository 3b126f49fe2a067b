"""Structured JSON logs (structlog) and Prometheus metrics; keys and tokens never reach a log."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECRET = re.compile(r"\b(sk|whsec|adm)_[A-Za-z0-9_\-]{6,}")


def _redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in event_dict.items():
        if isinstance(v, str) and _SECRET.search(v):
            event_dict[k] = _SECRET.sub(lambda m: m.group(1) + "_********", v)
    return event_dict


def configure_logging(level: str = "info", json: bool = True) -> None:
    """Idempotent structlog set-up: one JSON object per line on stderr, ISO timestamps in UTC."""
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    global _generation
    _generation += 1


_generation = 0  # how many times configure_logging ran: a Logger rebinds when it changes


class Logger:
    """A module's logger. structlog's lazy proxy builds a new bound logger on every call (~2 us,
    and a job's life logs four times even when the level filters them out); this one keeps its
    bound logger until ``configure_logging`` runs again. ``structlog.testing.capture_logs`` still
    sees every call: it edits the processor list in place, and the bound logger shares that list."""

    __slots__ = ("_bound", "_generation", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._generation = -1
        self._bound: Any = None

    def __getattr__(self, method: str) -> Any:
        if self._generation != _generation:
            self._bound, self._generation = structlog.get_logger(self._name).bind(), _generation
        return getattr(self._bound, method)


def get_logger(name: str = "genloom") -> Any:
    return Logger(name)


class Metrics:
    """The process's Prometheus metrics, on their own registry (no module globals)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.transitions = Counter(
            "genloom_job_transitions_total", "Job state transitions", ["type", "to"], registry=self.registry
        )
        self.jobs = Gauge("genloom_jobs", "Jobs by status and type", ["status", "type"], registry=self.registry)
        self.queue_depth = Gauge("genloom_queue_depth", "Runnable queued jobs", registry=self.registry)
        self.stage_latency = Histogram(
            "genloom_stage_latency_seconds",
            "Stage latency",
            ["type", "stage"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.webhooks = Counter(
            "genloom_webhook_deliveries_total", "Webhook outcomes", ["outcome"], registry=self.registry
        )
        self.http = Histogram(
            "genloom_http_request_seconds", "HTTP latency", ["method", "route", "status"], registry=self.registry
        )
        self._transitions: dict[tuple[str, str], Any] = {}

    def transitioned(self, type_: str, to: str) -> None:
        """Count one job transition. Each (type, state)'s child is kept: ``labels()`` costs about
        1 us a call, and every job makes three transitions or more."""
        child = self._transitions.get((type_, to))
        if child is None:
            child = self._transitions[(type_, to)] = self.transitions.labels(type_, to)
        child.inc()
