"""A replay socket is configured beside the KV-event stream it replays, or refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gantry.config import EngineSpec
from gantry.engines.kv_replay import wire_seq
from gantry.sim.settings import SimConfigError, SimSettings


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
