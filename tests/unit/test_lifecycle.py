"""The transition graph, exhaustively: every (from, to) pair over the seven states."""

from __future__ import annotations

import itertools

import pytest

from genloom import lifecycle
from genloom.errors import GenloomError, InvalidTransition
from genloom.lifecycle import (
    ACTIVE,
    ALLOWED,
    FINAL,
    REFUNDED,
    STATUS_EVENT,
    TERMINAL,
    TERMINAL_EVENTS,
    EventType,
    Status,
)

P, Q, R = Status.PENDING, Status.QUEUED, Status.RUNNING
C, F, X, E = Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED

#: The graph as the issue draws it, written out independently of lifecycle.ALLOWED.
EXPECTED_EDGES = {
    (P, Q), (P, R), (P, F), (P, X),
    (Q, R), (Q, F), (Q, X),
    (R, C), (R, F), (R, X), (R, E), (R, Q),
    (F, P), (E, P),
}
ALL_PAIRS = list(itertools.product(Status, Status))


def test_there_are_seven_states() -> None:
    assert [s.value for s in Status] == [
        "pending", "queued", "running", "completed", "failed", "cancelled", "expired"
    ]


def test_allowed_map_covers_every_state_and_matches_the_drawn_graph() -> None:
    assert set(ALLOWED) == set(Status)
    assert {(a, b) for a, targets in ALLOWED.items() for b in targets} == EXPECTED_EDGES


@pytest.mark.parametrize(("current", "target"), ALL_PAIRS, ids=[f"{a}->{b}" for a, b in ALL_PAIRS])
def test_check_every_pair(current: Status, target: Status) -> None:
    if (current, target) in EXPECTED_EDGES:
        lifecycle.check(current, target)
        lifecycle.check(current.value, target.value)  # plain strings from a row work too
        assert lifecycle.is_allowed(current, target)
    else:
        assert not lifecycle.is_allowed(current, target)
        with pytest.raises(InvalidTransition) as info:
            lifecycle.check(current, target)
        err = info.value
        assert err.code == "invalid_transition"
        assert err.status == 409
        assert err.details == {"from_status": current.value, "to_status": target.value}
        assert current.value in err.message and target.value in err.message


def test_no_state_moves_to_itself() -> None:
    for s in Status:
        with pytest.raises(InvalidTransition):
            lifecycle.check(s, s)


def test_unknown_status_is_not_a_transition() -> None:
    with pytest.raises(ValueError):
        lifecycle.check("pending", "paused")


def test_invalid_transition_is_a_genloom_error() -> None:
    assert issubclass(InvalidTransition, GenloomError)


def test_terminal_and_final_sets() -> None:
    assert {C, F, X, E} == TERMINAL
    assert {C, X} == FINAL
    assert {P, Q, R} == ACTIVE
    assert {F, X, E} == REFUNDED
    assert set(Status) == TERMINAL | ACTIVE
    assert not TERMINAL & ACTIVE
    assert FINAL <= TERMINAL
    assert REFUNDED <= TERMINAL


def test_final_states_can_never_be_left() -> None:
    for s in FINAL:
        assert ALLOWED[s] == frozenset()


def test_terminal_states_leave_only_by_admin_retry() -> None:
    for s in TERMINAL - FINAL:
        assert ALLOWED[s] == {P}


def test_every_terminal_state_is_reachable_from_running() -> None:
    assert ALLOWED[R] >= TERMINAL


def test_every_state_is_reachable_from_pending() -> None:
    seen, frontier = {P}, [P]
    while frontier:
        for nxt in ALLOWED[frontier.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(Status)


@pytest.mark.parametrize("target", list(Status))
def test_sources_is_the_inverse_of_allowed(target: Status) -> None:
    expected = {a for a, b in EXPECTED_EDGES if b == target}
    assert lifecycle.sources(target) == expected
    for src in lifecycle.sources(target):
        lifecycle.check(src, target)
    for src in set(Status) - lifecycle.sources(target):
        with pytest.raises(InvalidTransition):
            lifecycle.check(src, target)


def test_pending_has_no_sources_but_admin_retry() -> None:
    assert lifecycle.sources(P) == {F, E}


EVENT_NAMES = [
    "queued", "started", "vision_started", "vision_completed", "vision_failed", "stage_started",
    "stage_completed", "stage_failed", "retry_scheduled", "storage_write_completed", "webhook_dispatched",
    "webhook_delivered", "webhook_failed", "webhook_dead_letter", "completed", "failed", "cancelled",
    "expired", "cancel_requested",
]


def test_event_enum_is_exactly_the_nineteen_names() -> None:
    assert len(EVENT_NAMES) == 19
    assert sorted(e.value for e in EventType) == sorted(EVENT_NAMES)
    for e in EventType:
        assert e.name.lower() == e.value


def test_status_events() -> None:
    assert set(STATUS_EVENT) == set(Status)
    assert STATUS_EVENT[P] is None
    for s in set(Status) - {P, R}:
        assert STATUS_EVENT[s] == EventType(s.value)
    assert STATUS_EVENT[R] == EventType.STARTED


def test_terminal_events_are_the_terminal_states_events() -> None:
    assert {STATUS_EVENT[s] for s in TERMINAL} == TERMINAL_EVENTS
