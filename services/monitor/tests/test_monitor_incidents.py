"""The incident state machine, transition by transition."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import DegradationKind, MetricDegraded, MetricRecovered
from defectloop.monitor.incidents import (
    IncidentPolicy,
    IncidentState,
    IncidentTrack,
    Transition,
    TransitionKind,
    retire,
    step,
)
from defectloop.monitor.signals import Signal, SignalKey

pytestmark = pytest.mark.unit

KEY = SignalKey("A", "v1", DegradationKind.PERFORMANCE, "recall")
POLICY = IncidentPolicy()  # 2 of 3 to enter, 2 in a row to leave
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def signal(
    i: int, *, breached: bool = False, ok: bool = False, enough: bool = True, key: SignalKey = KEY
) -> Signal:
    """Evaluation ``i``: ``breached`` (entry rule holds), ``ok`` (exit rule holds)."""
    return Signal(
        key=key,
        value=0.7 if breached else 0.9,
        baseline=0.92,
        threshold=0.87,
        breached=breached,
        within_tolerance=ok,
        enough_data=enough,
        window_start=T0,
        window_end=T0 + timedelta(hours=i),
        sample_size=120,
        n_positive=60,
        ci_low=0.6 if breached else 0.9,
        ci_high=0.8 if breached else 0.97,
        change_point_at=T0 + timedelta(minutes=30) if breached else None,
        evidence={"cusum_statistic": 7.5} if breached else {},
    )


def run(
    signals: list[Signal], policy: IncidentPolicy = POLICY
) -> tuple[IncidentTrack, list[Transition]]:
    track = IncidentTrack(key=KEY)
    transitions = []
    for s in signals:
        track, t = step(track, s, policy)
        if t is not None:
            transitions.append(t)
    return track, transitions


def test_ok_stays_ok_without_a_breach() -> None:
    track, transitions = run([signal(1, ok=True), signal(2)])
    assert track.state is IncidentState.OK
    assert transitions == []


def test_ok_to_pending_on_the_first_breach() -> None:
    track, transitions = run([signal(1, breached=True)])
    assert track.state is IncidentState.PENDING
    assert track.recent == (True,)
    assert transitions == []


def test_pending_to_degraded_on_m_of_n_opens_one_incident() -> None:
    track, transitions = run([signal(1, breached=True), signal(2), signal(3, breached=True)])
    assert track.state is IncidentState.DEGRADED
    assert [t.kind for t in transitions] == [TransitionKind.OPENED]
    assert track.incident_id == transitions[0].incident_id
    assert track.opened_at == T0 + timedelta(hours=3)
    assert track.change_point_at == T0 + timedelta(minutes=30)


def test_pending_to_ok_when_the_breach_does_not_repeat() -> None:
    track, transitions = run([signal(1, breached=True), signal(2), signal(3)])
    assert track.state is IncidentState.OK
    assert track.recent == ()
    assert transitions == []


def test_degraded_keeps_one_incident_while_breaches_continue() -> None:
    _, transitions = run([signal(i, breached=True) for i in range(1, 10)])
    assert [t.kind for t in transitions] == [TransitionKind.OPENED]


def test_degraded_to_recovering_on_the_first_good_evaluation() -> None:
    track, transitions = run(
        [signal(1, breached=True), signal(2, breached=True), signal(3, ok=True)]
    )
    assert track.state is IncidentState.RECOVERING
    assert track.exit_streak == 1
    assert len(transitions) == 1


def test_degraded_stays_degraded_between_the_thresholds() -> None:
    # neither breached nor within the exit tolerance: not yet recovering
    track, _ = run([signal(1, breached=True), signal(2, breached=True), signal(3)])
    assert track.state is IncidentState.DEGRADED


def test_recovering_to_ok_after_k_in_a_row_closes_the_same_incident() -> None:
    track, transitions = run(
        [signal(1, breached=True), signal(2, breached=True), signal(3, ok=True), signal(4, ok=True)]
    )
    assert track.state is IncidentState.OK
    assert [t.kind for t in transitions] == [TransitionKind.OPENED, TransitionKind.CLOSED]
    assert transitions[0].incident_id == transitions[1].incident_id
    assert transitions[1].reason == "recovered"
    assert track.incident_id is None
    assert track.incidents_opened == 1


def test_recovering_to_degraded_when_it_breaches_again() -> None:
    track, transitions = run(
        [
            signal(1, breached=True),
            signal(2, breached=True),
            signal(3, ok=True),
            signal(4, breached=True),
        ]
    )
    assert track.state is IncidentState.DEGRADED
    assert track.exit_streak == 0
    assert len(transitions) == 1


def test_recovering_streak_is_broken_by_an_in_between_evaluation() -> None:
    track, transitions = run(
        [
            signal(1, breached=True),
            signal(2, breached=True),
            signal(3, ok=True),
            signal(4),
            signal(5, ok=True),
        ]
    )
    assert track.state is IncidentState.RECOVERING
    assert track.exit_streak == 1
    assert len(transitions) == 1


def test_not_enough_data_changes_nothing() -> None:
    for prefix in (
        [],
        [signal(1, breached=True)],
        [signal(1, breached=True), signal(2, breached=True)],
    ):
        before, _ = run(prefix)
        after, transition = step(before, signal(9, breached=True, enough=False), POLICY)
        assert after == before
        assert transition is None
        after, transition = step(before, signal(9, ok=True, enough=False), POLICY)
        assert after == before


def test_a_second_incident_gets_a_new_id() -> None:
    _, transitions = run(
        [
            signal(1, breached=True),
            signal(2, breached=True),
            signal(3, ok=True),
            signal(4, ok=True),
            signal(5, breached=True),
            signal(6, breached=True),
        ]
    )
    kinds = [t.kind for t in transitions]
    assert kinds == [TransitionKind.OPENED, TransitionKind.CLOSED, TransitionKind.OPENED]
    assert transitions[0].incident_id != transitions[2].incident_id


def test_incident_id_is_deterministic() -> None:
    signals = [signal(1, breached=True), signal(2, breached=True)]
    assert run(signals)[1][0].incident_id == run(signals)[1][0].incident_id


def test_m_of_one_opens_at_once_and_k_of_one_closes_at_once() -> None:
    policy = IncidentPolicy(enter_breaches=1, enter_window=1, exit_consecutive=1)
    track, transitions = run([signal(1, breached=True), signal(2, ok=True)], policy)
    assert track.state is IncidentState.OK
    assert [t.kind for t in transitions] == [TransitionKind.OPENED, TransitionKind.CLOSED]


def test_policy_rejects_m_above_n() -> None:
    with pytest.raises(ValidationError):
        IncidentPolicy(enter_breaches=3, enter_window=2)


def test_a_signal_for_another_key_is_refused() -> None:
    other = SignalKey("B", "v1", DegradationKind.PERFORMANCE, "recall")
    with pytest.raises(InvalidInputError):
        step(IncidentTrack(key=KEY), signal(1, key=other), POLICY)


def test_retire_closes_an_open_incident_and_nothing_else() -> None:
    degraded, opened = run([signal(1, breached=True), signal(2, breached=True)])
    closed, transition = retire(degraded)
    assert transition is not None
    assert transition.kind is TransitionKind.CLOSED
    assert transition.reason == "model_retired"
    assert transition.incident_id == opened[0].incident_id
    assert closed.state is IncidentState.OK
    assert retire(closed) == (closed, None)


def test_track_round_trips_through_json() -> None:
    track, _ = run([signal(1, breached=True), signal(2, breached=True), signal(3, ok=True)])
    assert IncidentTrack.model_validate_json(track.model_dump_json()) == track


def test_transitions_become_the_published_events() -> None:
    _, transitions = run(
        [signal(1, breached=True), signal(2, breached=True), signal(3, ok=True), signal(4, ok=True)]
    )
    now = T0 + timedelta(days=1)
    opened, closed = (t.to_event(now) for t in transitions)
    assert isinstance(opened, MetricDegraded)
    assert (opened.incident_id, opened.site_id, opened.model_version) == (
        transitions[0].incident_id,
        "A",
        "v1",
    )
    assert (opened.ci_low, opened.ci_high, opened.n_positive) == (0.6, 0.8, 60)
    assert opened.change_point_at == T0 + timedelta(minutes=30)
    assert opened.evidence == {"cusum_statistic": 7.5}
    assert isinstance(closed, MetricRecovered)
    assert closed.incident_id == opened.incident_id
    assert closed.reason == "recovered"
    assert opened.event_id != closed.event_id
    assert transitions[0].to_event(now).event_id == opened.event_id  # redelivery dedupes
