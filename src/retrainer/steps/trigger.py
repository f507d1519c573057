"""The retrain trigger: a pure decision over this pass's alarm and the state the previous passes left."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime

from retrainer.config import MonitorTrigger


@dataclass(frozen=True)
class TriggerState:
    """What the trigger remembers between passes."""

    armed: bool = True
    consecutive: int = 0
    last_fired: str | None = None
    champion_version: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict) -> TriggerState:
        return cls(**{k: payload[k] for k in cls.__dataclass_fields__ if k in payload})


@dataclass(frozen=True)
class TriggerDecision:
    """Fired or suppressed, why, and the state to keep for the next pass."""

    fired: bool
    reason: str
    state: TriggerState

    def to_dict(self) -> dict:
        return {"fired": self.fired, "reason": self.reason, "state": self.state.to_dict()}


def decide_trigger(
    *,
    alarm: bool,
    level: float,
    alarm_reasons: list[str],
    state: TriggerState,
    now: datetime,
    champion_version: str | None,
    pending_batches: int,
    pending_labelled_rows: int,
    config: MonitorTrigger,
) -> TriggerDecision:
    """Fire a retrain only on a sustained alarm, while armed, out of cooldown, with enough new labelled data.

    Hysteresis: a fire disarms the trigger; it re-arms when the signal level falls below `rearm_level` (1 = the
    threshold) or when a new champion brings a new reference. `consecutive` alarming passes are needed to fire.
    """
    if champion_version != state.champion_version:
        state = TriggerState(last_fired=state.last_fired, champion_version=champion_version)
    if not alarm:
        rearm = not state.armed and level < config.rearm_level
        kept = replace(state, consecutive=0, armed=state.armed or rearm)
        return TriggerDecision(False, "no alarm" + ("; re-armed" if rearm else ""), kept)
    state = replace(state, consecutive=state.consecutive + 1)
    if not state.armed:
        reason = f"hysteresis: not re-armed since the last retrain (level must fall below {config.rearm_level})"
        return TriggerDecision(False, reason, state)
    if state.consecutive < config.consecutive:
        return TriggerDecision(False, f"consecutive: alarm {state.consecutive}/{config.consecutive} passes", state)
    if state.last_fired is not None:
        hours = (now - datetime.fromisoformat(state.last_fired)).total_seconds() / 3600
        if hours < config.cooldown_hours:
            return TriggerDecision(
                False, f"cooldown: last retrain {hours:.1f} h ago (< {config.cooldown_hours} h)", state
            )
    if pending_batches == 0:
        return TriggerDecision(False, "no new data: no batch waiting in the inbox", state)
    if pending_labelled_rows < config.min_new_labels:
        reason = f"insufficient new labelled data: {pending_labelled_rows} < {config.min_new_labels} rows"
        return TriggerDecision(False, reason, state)
    fired = replace(state, armed=False, consecutive=0, last_fired=now.isoformat())
    return TriggerDecision(True, "fired: " + "; ".join(alarm_reasons), fired)
