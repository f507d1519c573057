"""The retrain trigger as a table: cooldown, sufficiency of new labelled data, hysteresis, champion changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from retrainer.config import MonitorTrigger
from retrainer.steps.trigger import TriggerState, decide_trigger

NOW = datetime(2013, 7, 15, 12, tzinfo=UTC)
POLICY = MonitorTrigger(consecutive=2, rearm_level=0.5, cooldown_hours=24, min_new_labels=2000)
READY = TriggerState(armed=True, consecutive=1, last_fired=None, champion_version="3")


def decide(alarm=True, level=1.4, state=READY, champion="3", batches=1, labelled=5000, now=NOW, policy=POLICY):
    return decide_trigger(
        alarm=alarm,
        level=level,
        alarm_reasons=["drift_share 0.524 >= 0.5"],
        state=state,
        now=now,
        champion_version=champion,
        pending_batches=batches,
        pending_labelled_rows=labelled,
        config=policy,
    )


def hours_ago(hours: float) -> str:
    return (NOW - timedelta(hours=hours)).isoformat()


@pytest.mark.parametrize(
    ("case", "kwargs", "fired", "reason"),
    [
        ("sustained alarm, armed, data waiting", {}, True, "fired: drift_share"),
        ("no alarm", {"alarm": False, "level": 0.8}, False, "no alarm"),
        ("first alarming pass", {"state": TriggerState(champion_version="3")}, False, "consecutive: alarm 1/2"),
        (
            "disarmed after a fire",
            {"state": TriggerState(armed=False, consecutive=5, champion_version="3")},
            False,
            "hysteresis: not re-armed",
        ),
        (
            "inside the cooldown",
            {"state": TriggerState(consecutive=1, last_fired=hours_ago(23.5), champion_version="3")},
            False,
            "cooldown: last retrain 23.5 h ago",
        ),
        (
            "cooldown over",
            {"state": TriggerState(consecutive=1, last_fired=hours_ago(24.5), champion_version="3")},
            True,
            "fired",
        ),
        ("nothing waiting in the inbox", {"batches": 0, "labelled": 0}, False, "no new data"),
        ("too few new labels", {"labelled": 1999}, False, "insufficient new labelled data: 1999 < 2000"),
        ("just enough new labels", {"labelled": 2000}, True, "fired"),
        ("a new champion resets the streak", {"champion": "4"}, False, "consecutive: alarm 1/2"),
    ],
)
def test_trigger_table(case, kwargs, fired, reason):
    decision = decide(**kwargs)
    assert decision.fired is fired, case
    assert decision.reason.startswith(reason), (case, decision.reason)


def test_a_fire_disarms_resets_the_streak_and_starts_the_cooldown():
    decision = decide()
    assert decision.state == TriggerState(armed=False, consecutive=0, last_fired=NOW.isoformat(), champion_version="3")


def test_a_suppressed_alarm_keeps_counting_and_a_quiet_pass_resets_the_count():
    state = decide(batches=0).state
    assert state.consecutive == 2 and state.armed
    assert decide(alarm=False, level=0.9, state=state).state.consecutive == 0


@pytest.mark.parametrize(("level", "armed"), [(0.9, False), (0.5, False), (0.49, True)])
def test_hysteresis_re_arms_only_below_the_lower_level(level, armed):
    disarmed = TriggerState(armed=False, consecutive=0, last_fired=hours_ago(48), champion_version="3")
    decision = decide(alarm=False, level=level, state=disarmed)
    assert decision.state.armed is armed
    assert decision.reason == ("no alarm; re-armed" if armed else "no alarm")


def test_a_new_champion_re_arms_but_keeps_the_cooldown():
    disarmed = TriggerState(armed=False, consecutive=0, last_fired=hours_ago(2), champion_version="3")
    first = decide(state=disarmed, champion="4")
    assert first.state.armed and first.state.champion_version == "4" and not first.fired
    second = decide(state=first.state, champion="4")
    assert not second.fired and second.reason.startswith("cooldown")


def test_a_noisy_signal_flapping_around_the_threshold_fires_once():
    """Alarm, quiet (but above the re-arm level), alarm, ... for two days of hourly passes: one retrain only."""
    state, fired = TriggerState(champion_version="3"), []
    for hour in range(48):
        alarm = hour % 3 != 2  # two alarming passes, then one just under the threshold
        decision = decide(alarm=alarm, level=1.1 if alarm else 0.9, state=state, now=NOW + timedelta(hours=hour))
        state = decision.state
        fired += [hour] if decision.fired else []
    assert fired == [1]
