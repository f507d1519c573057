"""Sticky weighted routing and rollout state transitions (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retrainer.serving.routing import RolloutState, choose_arms, hash_unit, routing_key

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_hash_unit_is_stable_and_in_range():
    assert hash_unit("UA|1545|2013-01-01T10:00:00Z") == hash_unit("UA|1545|2013-01-01T10:00:00Z")
    assert hash_unit("a") != hash_unit("b")
    values = [hash_unit(str(i)) for i in range(2000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert 0.45 < sum(values) / len(values) < 0.55


def test_a_flight_routes_as_it_did_in_earlier_releases():
    """Sticky across upgrades: the hash of a key, and so its arm at any weight, is pinned."""
    keys = ["UA|1545|2013-01-01T10:00:00Z", "B6|725|2013-01-01T10:00:00Z"]
    assert [hash_unit(k) for k in keys] == [0.08898927766121943, 0.6944922051587551]
    assert choose_arms(keys, 0.5) == ["challenger", "champion"]


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_choose_arm_respects_the_weight(weight: float):
    arms = choose_arms([f"key-{i}" for i in range(4000)], weight)
    share = arms.count("challenger") / len(arms)
    assert abs(share - weight) < 0.03
    if weight == 0.0:
        assert share == 0.0
    if weight == 1.0:
        assert share == 1.0


def test_a_key_keeps_its_arm_and_raising_the_weight_only_moves_keys_to_the_challenger():
    keys = [f"k{i}" for i in range(500)]
    low = dict(zip(keys, choose_arms(keys, 0.2), strict=True))
    high = dict(zip(keys, choose_arms(keys, 0.6), strict=True))
    assert low == dict(zip(keys, choose_arms(keys[::-1], 0.2)[::-1], strict=True)), "an arm does not depend on order"
    assert all(high[k] == "challenger" for k in keys if low[k] == "challenger")


@pytest.mark.parametrize("weight", [-0.1, 1.01])
def test_weights_outside_the_unit_interval_are_refused(weight: float):
    with pytest.raises(ValueError, match="challenger_weight"):
        choose_arms(["k"], weight)
    with pytest.raises(ValueError, match="challenger_weight"):
        RolloutState("1", "2", weight)


def test_routing_key_uses_the_configured_fields_only(params):
    fields = params.serve.routing_key
    assert fields == ("carrier", "flight", "time_hour")
    record = {"carrier": "UA", "flight": 1545, "time_hour": "2013-01-01T10:00:00Z", "distance": 1400}
    assert routing_key(record, fields) == "UA|1545|2013-01-01T10:00:00Z"
    assert routing_key({**record, "distance": 1}, fields) == routing_key(record, fields)
    assert routing_key({**record, "flight": 1546}, fields) != routing_key(record, fields)


def test_without_routing_fields_the_whole_record_is_the_key():
    record = {"b": 2, "a": "x", "t": "2013-01-01T10:00:00Z"}
    assert routing_key(record, ()) == routing_key(dict(reversed(record.items())), ())
    assert routing_key({**record, "b": 3}, ()) != routing_key(record, ())


def test_without_a_challenger_everything_goes_to_the_champion():
    state = RolloutState("1", None, 0.0)
    assert set(state.arms_for([f"k{i}" for i in range(200)])) == {"champion"}
    with pytest.raises(ValueError, match="no challenger"):
        state.with_weight(0.5)


def test_weight_promote_and_rollback_transitions():
    state = RolloutState("1").with_weight(0.3, "2", now=NOW)
    assert (state.champion_version, state.challenger_version, state.challenger_weight) == ("1", "2", 0.3)
    assert state.updated_at == "2026-01-02T03:04:05+00:00"
    with pytest.raises(ValueError, match="already the champion"):
        state.with_weight(0.3, "1")
    promoted = state.promoted(now=NOW)
    assert (promoted.champion_version, promoted.challenger_version, promoted.previous_champion_version) == (
        "2",
        None,
        "1",
    )
    restored = promoted.rolled_back(now=NOW)
    assert (restored.champion_version, restored.previous_champion_version) == ("1", None)
    dropped = state.rolled_back(now=NOW)
    assert (dropped.champion_version, dropped.challenger_version, dropped.effective_weight) == ("1", None, 0.0)
    with pytest.raises(ValueError, match="nothing to roll back"):
        RolloutState("1").rolled_back()


def test_state_round_trips_through_a_dict():
    state = RolloutState("3", "4", 0.25, "2026-01-01T00:00:00+00:00", "2")
    assert RolloutState.from_dict(state.to_dict()) == state
    assert RolloutState.from_dict({"champion_version": 5, "challenger_weight": "0.5", "extra": 1}) == RolloutState(
        "5", None, 0.5
    )


def test_a_field_left_out_and_a_field_sent_as_null_route_alike(params):
    """The request schema takes both for a nullable field; the key was `...|` for one and `...|None` for the other,
    so the same record could change arm with the way its client spelled "unknown" (and the text "None" collided
    with null)."""
    from retrainer.serving.schema import record_schema

    record = {
        "year": 2013, "month": 1, "day": 1, "sched_dep_time": 515, "sched_arr_time": 819, "carrier": "UA",
        "flight": 1545, "origin": "EWR", "dest": "IAH", "distance": 1400.0, "hour": 5, "minute": 15,
        "time_hour": "2013-01-01T10:00:00Z",
    }  # fmt: skip
    omitted, null = record_schema(params).validate([record, {**record, "tailnum": None}])
    for fields in (("carrier", "tailnum"), ()):
        assert routing_key(omitted, fields) == routing_key(null, fields)
    assert routing_key({**record, "tailnum": "None"}, ("tailnum",)) != routing_key(null, ("tailnum",))
