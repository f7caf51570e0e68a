"""The planner's inputs as text: SLOs with percentiles and GPU prices.

``ttft_p90=500ms,tpot_p90=50ms,e2el_p99=10s``: metric ``ttft``, ``tpot`` or ``e2el``,
an optional percentile (``_p50`` … ``_p99.9``, default p90), a value with ``ms``, ``s``
or ``us`` (a bare number is milliseconds). A price is dollars per GPU-hour: ``2.5``,
``2.5/h``, ``$2.5/h``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gantry.errors import ConfigError

METRICS = ("ttft", "tpot", "e2el")
DEFAULT_PERCENTILE = 90.0
_UNITS = {"ms": 1e-3, "s": 1.0, "us": 1e-6, "": 1e-3}
_SPEC = re.compile(
    r"^\s*(?P<metric>[a-z0-9]+?)(?:_p(?P<p>\d+(?:\.\d+)?))?\s*[=:]\s*"
    r"(?P<value>\d*\.?\d+)\s*(?P<unit>ms|s|us)?\s*$"
)
_PRICE = re.compile(r"^\s*\$?\s*(?P<v>\d*\.?\d+)\s*(?:/\s*(?:h|hr|hour))?\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Target:
    """One SLO term: ``percentile`` of ``metric`` at most ``seconds``."""

    metric: str
    percentile: float
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.metric}_p{self.percentile:g}"

    def __str__(self) -> str:
        return f"{self.label}<={self.seconds * 1000:g}ms"


def parse_slo(spec: str) -> tuple[Target, ...]:
    """Parse an SLO list; ``ConfigError`` (one line) on anything else."""
    out: list[Target] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _SPEC.match(part)
        if m is None or m["metric"] not in METRICS:
            raise ConfigError(
                f"cannot parse --slo {part.strip()!r}: use METRIC[_pNN]=VALUE[ms|s] with METRIC "
                "ttft, tpot or e2el, e.g. ttft_p90=500ms,tpot_p90=50ms"
            )
        p = float(m["p"]) if m["p"] else DEFAULT_PERCENTILE
        if not 0 < p < 100:
            raise ConfigError(f"--slo {part.strip()!r}: the percentile must be in (0, 100)")
        value = float(m["value"]) * _UNITS[m["unit"] or ""]
        if value <= 0:
            raise ConfigError(f"--slo {part.strip()!r}: the value must be positive")
        out.append(Target(m["metric"], p, value))
    if not out:
        raise ConfigError("--slo is empty: give at least one term, e.g. ttft_p90=500ms")
    return tuple(out)


def parse_price(spec: str) -> float:
    """Dollars per GPU-hour."""
    m = _PRICE.match(spec)
    if m is None or float(m["v"]) <= 0:
        raise ConfigError(f"cannot parse --price {spec!r}: dollars per GPU-hour, e.g. 2.5 or 2.5/h")
    return float(m["v"])


__all__ = ["METRICS", "Target", "parse_price", "parse_slo"]
