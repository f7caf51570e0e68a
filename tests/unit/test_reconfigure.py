"""What a configuration change does to a running gateway (the pure plan)."""

from __future__ import annotations

import pytest

from gantry.config import EngineSpec, load_config
from gantry.errors import ConfigError
from gantry.gateway.reconfigure import plan

A = {"url": "http://a:8000", "name": "a"}
B = {"url": "http://b:8000", "name": "b"}
C = {"url": "http://c:8000"}


def cfg(**over: object):
    return load_config(env={}, overrides={"engines": [A, B], **over})


def running(c) -> dict[str, EngineSpec]:
    return {spec.name or f"engine-{i}": spec for i, spec in enumerate(c.engines)}


def test_no_change_is_an_empty_plan():
    old = cfg()
    assert plan(old, cfg(), running(old)).empty


@pytest.mark.parametrize(
    ("over", "sections"),
    [
        ({"aliases": {"gpt-4": "m"}}, ("aliases",)),
        ({"splits": {"chat": {"targets": [{"model": "m", "weight": 1}]}}}, ("splits",)),
        ({"routing": {"policy": "round_robin"}}, ("routing",)),
        ({"tiers": {"gold": {"rpm": 5}}}, ("tiers",)),
        ({"timeouts": {"ttft_s": 5}, "retry": {"attempts": 0}}, ("timeouts", "retry")),
    ],
)
def test_live_sections(over, sections):
    old = cfg()
    p = plan(old, cfg(**over), running(old))
    assert set(p.sections) == set(sections) and not p.added and not p.removed


@pytest.mark.parametrize(
    "over",
    [
        {"port": 9999},
        {"security": {"auth": "off"}},
        {"idempotency": {"store": "redis"}},
        {"ratelimit": {"store": "redis"}},
        {"workers": 2},
        {"tracing": {"enabled": True}},
    ],
)
def test_restart_sections_refuse_the_whole_change(over):
    old = cfg()
    with pytest.raises(ConfigError, match="need a restart"):
        plan(old, cfg(**over, aliases={"x": "m"}), running(old))


def test_engines_added_removed_and_changed():
    old = cfg()
    new = load_config(
        env={}, overrides={"engines": [A, {**B, "group": "canary"}, C]}
    )  # b changed, c added
    p = plan(old, new, running(old))
    assert p.removed == ("b",)
    assert [s.name or s.url for s in p.added] == ["b", "http://c:8000"]
    gone = load_config(env={}, overrides={"engines": [A]})
    assert plan(old, gone, running(old)).removed == ("b",)
