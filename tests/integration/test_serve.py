"""`gantry serve` as a user runs it: embedded default, workers, tracing."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import httpx

from gantry.netutil import free_port
from tests.helpers import gantry_cmd, gateway, metric_value, require_redis, sim, wait_until
from tests.recording_engine import recording_engine


def test_embedded_default_serves_and_stops_its_simulated_engines(tmp_path):
    """`gantry serve` with no engines, auth on (the README's quickstart runs in test_docs)."""
    db = {"GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp_path}/embedded.db"}
    key = subprocess.run(
        gantry_cmd("keys", "create", "--tenant", "me"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **db},
        check=True,
    ).stdout.strip()
    with gateway(tmp_path, timeout=60, secure=True, env=db) as gw:
        assert gw.logs().count("SIMULATED engine") == 2
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "model": "qwen2.5-1.5b-instruct",
                "messages": [{"role": "user", "content": "Hello!"}],
                "max_tokens": 4,
            },
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["object"] == "chat.completion"
        children = subprocess.run(
            ["pgrep", "-P", str(gw.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2

    def gone(pid: str) -> bool:
        status = Path(f"/proc/{pid}/status")
        try:
            return "zombie" in status.read_text().lower()
        except FileNotFoundError:
            return True

    # The simulated engines stop with the gateway.
    wait_until(lambda: all(gone(pid) for pid in children), 30, "the engines exiting")


def test_workers_share_metrics_and_dead_workers_come_back(tmp_path):
    require_redis()
    env = {
        "GANTRY_IDEMPOTENCY__STORE": "redis",
        "GANTRY_IDEMPOTENCY__KEY_PREFIX": f"gantry-test-{uuid.uuid4().hex[:8]}-",
    }
    with (
        sim(tmp_path, "--profile", "instant", "--served-model-name", "m") as e,
        gateway(tmp_path, "--engine", e.url, "--workers", "2", env=env) as gw,
    ):
        for _ in range(30):
            r = httpx.post(
                gw.url + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}
            )
            assert r.status_code == 200
        text = httpx.get(gw.url + "/metrics").text
        done = metric_value(text, "gantry_requests_total", endpoint="/v1/completions")
        assert done == 30
        workers = _children(gw.proc.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        # the parent notices and starts another worker (after a 1 s backoff)
        wait_until(
            lambda: len(set(_children(gw.proc.pid)) - {workers[0]}) == 2,
            what="a replacement worker",
        )
        wait_until(lambda: "worker pid" in gw.logs() and "restarting" in gw.logs())
        for _ in range(10):
            r = httpx.post(
                gw.url + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}
            )
            assert r.status_code == 200
        assert gw.stop(signal.SIGTERM) == 0


def _children(pid: int) -> list[int]:
    """The gateway's worker processes (not multiprocessing's resource tracker)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    workers = []
    for child in out.split():
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmd:
            workers.append(int(child))
    return workers


def test_workers_with_memory_stores_are_refused_with_one_line(tmp_path):
    out = subprocess.run(
        gantry_cmd("serve", "--engine", "http://127.0.0.1:9", "--workers", "2"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "GANTRY_SECURITY__DATABASE_URL": f"sqlite:///{tmp_path}/w.db"},
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "idempotency.store: redis" in lines[0]
    assert "ratelimit.store: redis" in lines[0]  # auth is on by default


def test_traceparent_reaches_engines_and_spans_are_emitted(tmp_path):
    with recording_engine() as (url, seen):
        cfg = tmp_path / "t.yaml"
        cfg.write_text(
            f"engines:\n  - url: {url}\ntracing:\n  enabled: true\n  exporter: console\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                headers={"traceparent": parent},
                json={"model": "rec", "messages": [{"role": "user", "content": "x"}]},
            )
            assert r.status_code == 200
            sent = seen[-1]["traceparent"]
            assert sent.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"  # same trace
            assert sent != parent  # a child span of the gateway's
            gw.stop()
            logs = gw.logs()
        for name in ("gantry.request", "admission", "routing", "dispatch"):
            assert f'"name": "{name}"' in logs, name


def test_traceparent_passes_through_without_tracing(tmp_path):
    with recording_engine() as (url, seen), gateway(tmp_path, "--engine", url) as gw:
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        httpx.post(
            gw.url + "/v1/chat/completions",
            headers={"traceparent": parent},
            json={"model": "rec", "messages": [{"role": "user", "content": "x"}]},
        )
        assert seen[-1]["traceparent"] == parent
        assert seen[-1]["x-request-id"]


def test_embeddings_are_relayed_where_an_engine_serves_them(tmp_path):
    import openai

    with recording_engine("emb") as (url, _), gateway(tmp_path, "--engine", url) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
        out = client.embeddings.create(model="emb", input=["a", "b"])
        assert [d.index for d in out.data] == [0, 1] and out.data[0].embedding == [0.1, 0.2, 0.3]
        r = httpx.post(gw.url + "/v1/embeddings", json={"model": "emb"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_engine_without_metrics_and_nonvllm_errors(tmp_path):
    """An OpenAI-compatible server with no /metrics still serves; 404 /metrics tolerated."""
    with recording_engine() as (url, _), gateway(tmp_path, "--engine", url) as gw:
        r = httpx.post(
            gw.url + "/v1/chat/completions",
            json={"model": "rec", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.status_code == 200
        assert httpx.get(gw.url + "/readyz").status_code == 200


def test_gateway_launches_its_own_engines(tmp_path):
    """`engines: launch:` — one command serves a model behind the gateway (simulated
    here: no GPU); the engines stop with the gateway."""
    port = free_port()
    cfg = tmp_path / "launch.yaml"
    cfg.write_text(
        "engines:\n  launch:\n"
        f"    - {{model: qwen2.5-1.5b-instruct, mode: simulate, gpu_type: L4, gpus: [0],\n"
        f"       port: {port}, name: gpu, sim_args: ['--profile', 'instant'],\n"
        "       warmup: {enabled: false}}\n"
    )
    with gateway(tmp_path, "-c", str(cfg), timeout=120) as gw:
        r = httpx.post(
            gw.url + "/v1/completions",
            json={"model": "qwen2.5-1.5b-instruct", "prompt": "x", "max_tokens": 2},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
    wait_until(lambda: not _listening(port), what="the launched engine to stop")


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
