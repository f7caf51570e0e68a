"""SLO specs: ``ttft=500ms,tpot=50ms,e2el=2s`` -> {"ttft": 500.0, ...} (milliseconds)."""

from __future__ import annotations

import re

METRICS = ("ttft", "tpot", "itl", "e2el")
_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "": 1.0}
_SPEC = re.compile(r"^\s*(ttft|tpot|itl|e2el)\s*[=:]\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*$")


class SLOError(ValueError):
    pass


def parse_slo(spec: str | None) -> dict[str, float]:
    """Parse an SLO list; a bare number is milliseconds. Raises SLOError with one line."""
    out: dict[str, float] = {}
    if not spec:
        return out
    for part in spec.split(","):
        if not part.strip():
            continue
        m = _SPEC.match(part)
        if not m:
            raise SLOError(
                f"cannot parse SLO {part.strip()!r}: use METRIC=VALUE[ms|s] with METRIC in "
                f"{', '.join(METRICS)}, e.g. ttft=500ms,tpot=50ms"
            )
        name, value, unit = m.group(1), float(m.group(2)), m.group(3) or ""
        if value <= 0:
            raise SLOError(f"SLO {name} must be positive")
        out[name] = value * _UNITS[unit]
    return out
