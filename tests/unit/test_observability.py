"""Logging set-up: a module's logger follows every configure_logging (level and output), is seen
by capture_logs, and never writes a secret key. Metrics: transitions counted per type and state."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from genloom.observability import Metrics, configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    configure_logging("info")


def lines(err: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_a_logger_made_before_a_reconfigure_follows_it(capsys: pytest.CaptureFixture[str]) -> None:
    log = get_logger("genloom.probe")
    configure_logging("warning")
    log.info("probe.hidden")
    log.warning("probe.shown", n=1)
    configure_logging("info")  # the level of the same logger object changes with the configuration
    log.info("probe.now_shown")
    got = lines(capsys.readouterr().err)
    assert [(e["event"], e["level"]) for e in got] == [("probe.shown", "warning"), ("probe.now_shown", "info")]
    assert got[0]["n"] == 1 and str(got[0]["ts"]).endswith("Z")


def test_capture_logs_sees_a_logger_that_already_logged(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    log = get_logger("genloom.probe")
    log.info("probe.before")
    with capture_logs() as captured:
        log.info("probe.captured", job_id="job_1")
    log.info("probe.after")
    assert captured == [{"event": "probe.captured", "job_id": "job_1", "log_level": "info"}]
    assert [e["event"] for e in lines(capsys.readouterr().err)] == ["probe.before", "probe.after"]


def test_secret_keys_never_reach_a_log_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    get_logger("genloom.probe").warning("probe.leak", detail="bad key sk_live_abcdef123456 given", ok="pk_abcdefghij")
    (got,) = lines(capsys.readouterr().err)
    assert got["detail"] == "bad key sk_******** given" and got["ok"] == "pk_abcdefghij"


def test_transitions_are_counted_per_type_and_state() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.transitioned("motion", "completed")
    metrics.transitioned("motion", "failed")
    metrics.transitioned("tts", "completed")
    value = metrics.registry.get_sample_value
    assert value("genloom_job_transitions_total", {"type": "motion", "to": "completed"}) == 3
    assert value("genloom_job_transitions_total", {"type": "motion", "to": "failed"}) == 1
    assert value("genloom_job_transitions_total", {"type": "tts", "to": "completed"}) == 1
    assert value("genloom_job_transitions_total", {"type": "tts", "to": "failed"}) is None
