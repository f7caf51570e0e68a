"""The supervisor's Python API, as the gateway uses it: the thread wrapper over simulated
engines, and a crash loop surfacing as a degraded engine."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import httpx
import pytest

from gantry.errors import LaunchError
from gantry.netutil import free_port
from gantry.supervisor import (
    EngineState,
    EngineSupervisor,
    LaunchSpec,
    RecordedGpus,
    RestartSettings,
    SupervisorThread,
    prepare,
)

FIXTURES = Path(__file__).parent.parent / "fixtures" / "gpus"


def test_supervisor_thread_hands_ready_engines_to_a_synchronous_caller():
    spec = LaunchSpec(
        model="qwen2.5-1.5b-instruct",
        mode="simulate",
        gpus=(0,),
        port=free_port(),
        sim_args=("--profile", "instant"),
    )
    launched = SupervisorThread(spec)
    specs = launched.start(ready_timeout_s=60)
    try:
        (engine,) = specs
        assert engine.name == "engine-0" and engine.models == ("qwen2.5-1.5b-instruct",)
        assert httpx.get(engine.url + "/health").status_code == 200
        assert launched.supervisor is not None
        pid = launched.supervisor.statuses()[0].pid
        assert pid is not None
    finally:
        launched.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(engine.url + "/health")


async def test_a_crash_loop_makes_the_engine_degraded(tmp_path):
    fake = tmp_path / "vllm"
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('engine init failed')\nsys.exit(3)\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    source = RecordedGpus.from_file(FIXTURES / "a10gx2.json")
    spec = LaunchSpec(
        model="qwen2.5-1.5b-instruct",
        gpus=(0,),
        port=free_port(),
        vllm_bin=str(fake),
        restart=RestartSettings(backoff_initial_s=0.01, backoff_max_s=0.05, crash_loop_restarts=3),
    )
    plan, detection = prepare(spec, open_gpus=lambda: source)
    assert not plan.simulated
    async with EngineSupervisor(plan, spec, detection=detection, status_port=0) as sup:
        with pytest.raises(
            LaunchError, match="engine-0 is degraded: exited with 3: engine init failed"
        ):
            await sup.wait_ready(timeout_s=30)
        (status,) = sup.statuses()
        assert status.state is EngineState.DEGRADED and status.restarts >= 3
        ready, body = sup.health()
        assert not ready and body["state"] == "degraded"
        assert sup.status_server is not None
        async with httpx.AsyncClient(base_url=sup.status_server.url) as client:
            r = await client.get("/health")
            metrics = (await client.get("/metrics")).text
        assert r.status_code == 503 and r.json()["engines"][0]["state"] == "degraded"
        assert 'gantry_gpu_power_watts{gpu="0"} 30.0' in metrics
    assert [s.state for s in sup.statuses()] == [EngineState.STOPPED]
