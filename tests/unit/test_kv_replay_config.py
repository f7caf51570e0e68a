"""A replay socket is configured beside the KV-event stream it replays, or refused."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gantry.config import EngineSpec
from gantry.engines.kv_replay import wire_seq
from gantry.sim.settings import SimConfigError, SimSettings
from gantry.sim.vllm_cli import parse


def test_engine_spec_replay_endpoint():
    spec = EngineSpec(url="http://e:8000", kv_events="tcp://e:5557", kv_replay="tcp://e:5558")
    assert spec.kv_replay == "tcp://e:5558"
    with pytest.raises(ValidationError, match="kv_replay must be a ZMQ endpoint"):
        EngineSpec(url="http://e:8000", kv_events="tcp://e:5557", kv_replay="http://e:5558")
    with pytest.raises(ValidationError, match="kv_replay needs kv_events"):
        EngineSpec(url="http://e:8000", kv_replay="tcp://e:5558")


def test_sim_refuses_a_replay_socket_without_events():
    with pytest.raises(SimConfigError, match="--kv-events-replay needs --kv-events"):
        SimSettings(kv_events_replay="tcp://*:5558").resolve()


def test_wire_seq():
    assert wire_seq([b"t", (7).to_bytes(8, "big"), b"x"]) == 7
    assert wire_seq([b"t", b"short", b"x"]) is None
    assert wire_seq([b"only two", b"x"]) is None


def kv_config(**cfg: object) -> SimSettings:
    text = json.dumps({"enable_kv_cache_events": True, **cfg})
    return parse(["serve", "m", "--kv-events-config", text]).settings


def test_vllm_kv_events_config_carries_the_replay_socket():
    s = kv_config(endpoint="tcp://*:6000", replay_endpoint="tcp://*:6001", buffer_steps=64)
    assert (s.kv_events, s.kv_events_replay, s.kv_events_buffer_steps) == (
        "tcp://*:6000",
        "tcp://*:6001",
        64,
    )
    assert kv_config().kv_events_buffer_steps == 10_000  # vLLM's default
    for bad in ("64", 6.5, True, None):
        with pytest.raises(SimConfigError, match="buffer_steps must be an integer"):
            kv_config(buffer_steps=bad)


@pytest.mark.parametrize("steps", [0, -1, 1_000_001])
def test_sim_refuses_a_ring_out_of_bounds(steps):
    settings = SimSettings(kv_events="tcp://*:5557", kv_events_buffer_steps=steps)
    with pytest.raises(SimConfigError, match="--kv-events-buffer-steps must be 1 to 1,000,000"):
        settings.resolve()
