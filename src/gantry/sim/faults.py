"""Fault injection: what to break, and a pure decision per request.

Set by flags at start-up or at run time through ``POST /sim/faults`` (only when the
admin endpoint is enabled). Every fault is counted in ``gantry_sim_faults_total`` and
logged.
"""

from __future__ import annotations

import enum
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any


class Action(enum.Enum):
    NONE = "none"
    ERROR = "error"  # answer with an HTTP error status
    HANG = "hang"  # accept and never answer
    STALL = "stall"  # stream some tokens, then never send more
    DROP = "drop"  # stream some tokens, then drop the connection


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action = Action.NONE
    status: int = 0
    delay_s: float = 0.0
    after_tokens: int = 0


@dataclass(slots=True)
class FaultConfig:
    error_rate: dict[int, float] = field(default_factory=dict)  # status -> probability
    latency_ms: float = 0.0  # added before the first token of every request
    spike_rate: float = 0.0
    spike_ms: float = 0.0
    hang_rate: float = 0.0
    stall_rate: float = 0.0
    drop_rate: float = 0.0
    stall_after_tokens: int = 3
    crash_after: int = 0  # requests; 0 = never
    slowdown: float = 1.0  # step-time multiplier
    kv_reserve_frac: float = 0.0  # fraction of KV blocks held back (pressure)

    def update(self, patch: dict[str, Any]) -> None:
        """Apply a JSON patch; raises ValueError on unknown keys or bad values."""
        names = {f.name for f in fields(self)}
        for key, value in patch.items():
            if key not in names:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(names))}")
            if key == "error_rate":
                if not isinstance(value, dict):
                    raise ValueError("error_rate must map status codes to probabilities")
                rates = {int(k): float(v) for k, v in value.items()}
                for status, p in rates.items():
                    if status not in (429, 500, 503) or not 0 <= p <= 1:
                        raise ValueError("error_rate takes 429/500/503 with 0..1 probabilities")
                self.error_rate = rates
                continue
            current = getattr(self, key)
            try:
                cast = type(current)(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"fault {key!r} must be a {type(current).__name__}") from exc
            if cast < 0 or (key.endswith("_rate") and cast > 1):
                raise ValueError(f"fault {key!r} out of range: {value!r}")
            setattr(self, key, cast)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["error_rate"] = {str(k): v for k, v in self.error_rate.items()}
        return d

    @property
    def active(self) -> bool:
        return self != FaultConfig()


def decide(cfg: FaultConfig, rng: random.Random) -> Decision:
    """Pure: what happens to one request, given the config and a random draw."""
    delay = cfg.latency_ms / 1000
    if cfg.spike_rate and rng.random() < cfg.spike_rate:
        delay += cfg.spike_ms / 1000
    for status, p in sorted(cfg.error_rate.items()):
        if p and rng.random() < p:
            return Decision(Action.ERROR, status=status, delay_s=delay)
    if cfg.hang_rate and rng.random() < cfg.hang_rate:
        return Decision(Action.HANG, delay_s=delay)
    if cfg.stall_rate and rng.random() < cfg.stall_rate:
        return Decision(Action.STALL, delay_s=delay, after_tokens=cfg.stall_after_tokens)
    if cfg.drop_rate and rng.random() < cfg.drop_rate:
        return Decision(Action.DROP, delay_s=delay, after_tokens=cfg.stall_after_tokens)
    return Decision(delay_s=delay)


def parse_error_rates(specs: list[str]) -> dict[int, float]:
    """``["503=0.1", "429=0.05"]`` -> ``{503: 0.1, 429: 0.05}``."""
    out: dict[int, float] = {}
    for spec in specs:
        status, sep, rate = spec.partition("=")
        if not sep:
            raise ValueError(f"error rate {spec!r} must look like STATUS=PROBABILITY")
        try:
            out[int(status)] = float(rate)
        except ValueError as exc:
            raise ValueError(f"error rate {spec!r} must look like 503=0.1") from exc
    cfg = FaultConfig()
    cfg.update({"error_rate": out})
    return out
