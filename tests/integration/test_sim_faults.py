"""Fault injection, client aborts, KV events, slow start and the local cluster."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import msgpack
import pytest

from gantry.netutil import free_port
from tests.helpers import (
    Proc,
    gantry_cmd,
    metric_value,
    run_proc,
    sim,
    wait_http,
    wait_until,
)


def set_faults(p: Proc, **patch: object) -> None:
    r = httpx.post(p.url + "/sim/faults", json={"reset": True, **patch})
    assert r.status_code == 200, r.text


def test_error_faults_at_runtime_and_metrics(fast_sim: Proc):
    set_faults(fast_sim, error_rate={"503": 1.0})
    r = httpx.post(fast_sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 503 and r.json()["error"]["code"] == 503
    set_faults(fast_sim, error_rate={"429": 1.0})
    assert httpx.post(fast_sim.url + "/v1/completions", json={"prompt": "x"}).status_code == 429
    set_faults(fast_sim)
    assert httpx.post(fast_sim.url + "/v1/completions", json={"prompt": "x"}).status_code == 200
    text = httpx.get(fast_sim.url + "/metrics").text
    assert metric_value(text, "gantry_sim_faults_total", kind="error_503") >= 1
    bad = httpx.post(fast_sim.url + "/sim/faults", json={"hang_rate": 5})
    assert bad.status_code == 400 and "out of range" in bad.json()["error"]["message"]


def test_hang_stall_and_drop(fast_sim: Proc):
    set_faults(fast_sim, hang_rate=1.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(fast_sim.url + "/v1/completions", json={"prompt": "x"}, timeout=0.5)
    set_faults(fast_sim, stall_rate=1.0, stall_after_tokens=2)
    got = []
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream(
            "POST",
            fast_sim.url + "/v1/completions",
            timeout=0.7,
            json={"prompt": "x", "max_tokens": 50, "stream": True},
        ) as r,
    ):
        for line in r.iter_lines():
            if line:
                got.append(line)
    assert len(got) == 2
    set_faults(fast_sim, drop_rate=1.0, stall_after_tokens=2)
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream(
            "POST",
            fast_sim.url + "/v1/completions",
            json={"prompt": "x", "max_tokens": 50, "stream": True},
        ) as r,
    ):
        for _ in r.iter_lines():
            pass
    set_faults(fast_sim)


def test_latency_fault_delays_first_token(fast_sim: Proc):
    set_faults(fast_sim, latency_ms=300)
    t = time.monotonic()
    httpx.post(fast_sim.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert time.monotonic() - t >= 0.3
    set_faults(fast_sim)


def test_client_disconnect_aborts_and_frees_blocks(tmp_path):
    with sim(tmp_path, "--speedup", "1", "--enable-admin") as p:
        before = metric_value(
            httpx.get(p.url + "/metrics").text,
            "vllm:request_success_total",
            finished_reason="abort",
        )
        with httpx.stream(
            "POST",
            p.url + "/v1/completions",
            json={
                "prompt": "long " * 500,
                "max_tokens": 2000,
                "ignore_eos": True,
                "stream": True,
            },
        ) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 3:
                    break

        def idle() -> dict[str, float] | None:
            stats: dict[str, float] = httpx.get(p.url + "/sim/stats").json()
            return stats if stats["running"] == 0 else None

        stats = wait_until(idle, 30, "the engine aborting the request")
        assert stats["kv_usage"] == 0.0
        after = metric_value(
            httpx.get(p.url + "/metrics").text,
            "vllm:request_success_total",
            finished_reason="abort",
        )
        assert after == before + 1


def test_crash_on_command_and_after_n(tmp_path):
    with sim(tmp_path, "--profile", "instant", "--enable-admin") as p:
        httpx.post(p.url + "/sim/crash")
        assert p.proc.wait(5) != 0
    with sim(tmp_path, "--profile", "instant", "--fault-crash-after", "2") as p:
        for _ in range(2):
            assert httpx.post(p.url + "/v1/completions", json={"prompt": "x"}).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.post(p.url + "/v1/completions", json={"prompt": "x"})
        assert p.proc.wait(5) != 0


def test_slow_start_refuses_connections_until_ready(tmp_path):
    port = free_port()
    with run_proc(
        gantry_cmd("sim", "--port", str(port), "--slow-start", "3", "--profile", "instant"),
        port,
        tmp_path,
        wait=False,
    ) as p:
        wait_until(lambda: "slow start" in p.logs(), 30, "the engine starting to load")
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # connection refused while loading
        wait_http(p.url, 20, p.proc)


def test_kv_pressure_causes_preemption(tmp_path):
    # 63 usable blocks of 16 tokens; 8 requests of 200 + 200 tokens need 200 blocks, sent
    # together on a sped-up realistic clock so they are certain to overlap.
    with sim(
        tmp_path, "--speedup", "50", "--num-gpu-blocks-override", "64", "--max-model-len", "512"
    ) as p:

        async def run() -> list[int]:
            async with httpx.AsyncClient(timeout=60) as c:
                rs = await asyncio.gather(
                    *(
                        c.post(
                            p.url + "/v1/completions",
                            json={
                                "prompt": list(range(1000 + i, 1200 + i)),
                                "max_tokens": 200,
                                "ignore_eos": True,
                            },
                        )
                        for i in range(8)
                    )
                )
            return [r.status_code for r in rs]

        assert asyncio.run(run()) == [200] * 8
        text = httpx.get(p.url + "/metrics").text
        assert metric_value(text, "vllm:num_preemptions_total") > 0
        assert metric_value(text, "vllm:request_success_total", finished_reason="length") == 8


def test_kv_events_published_over_zmq(tmp_path):
    import zmq

    port = free_port()
    with sim(tmp_path, "--profile", "instant", "--kv-events", f"tcp://*:{port}") as p:
        assert httpx.get(p.url + "/kv_event_sources").json()["0"]["endpoint"].endswith(str(port))
        ctx = zmq.Context.instance()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(f"tcp://127.0.0.1:{port}")
        warm_ups = iter(range(1000))

        def subscribed() -> bool:
            # PUB drops what it sends before the subscription arrives: publish until one
            # message gets through (each warm-up prompt is new, so it stores blocks).
            prompt = f"warm-up {next(warm_ups)} " + "hello " * 40
            httpx.post(p.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2})
            return bool(sub.poll(100))

        wait_until(subscribed, 30, "the subscription taking effect")
        prompt = list(range(1000, 1080))  # five full blocks no other request has
        httpx.post(p.url + "/v1/completions", json={"prompt": prompt, "max_tokens": 2})
        while True:
            assert sub.poll(10_000), "no KV event for the request"
            topic, seq, payload = sub.recv_multipart()
            ts, events, rank = msgpack.unpackb(payload)
            if events[0].get("token_ids", [])[:16] == prompt[:16]:
                break
        sub.close()
    assert topic == b"" and len(seq) == 8
    assert isinstance(ts, float) and rank == 0
    stored = events[0]
    assert stored["type"] == "BlockStored" and stored["medium"] == "GPU"
    assert stored["block_size"] == 16 and len(stored["token_ids"]) == 16 * len(
        stored["block_hashes"]
    )
    assert stored["parent_block_hash"] is None
    assert all(0 <= h < 2**64 for h in stored["block_hashes"])


def test_cluster_of_engines(tmp_path):
    base = _two_free_ports()
    with run_proc(
        gantry_cmd("sim", "--engines", "2", "--base-port", str(base), "--profile", "instant"),
        base,
        tmp_path,
        timeout=60,
    ) as p:
        wait_http(f"http://127.0.0.1:{base + 1}", 60)
        for port in (base, base + 1):
            r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x"})
            assert r.status_code == 200
        p.stop()
        assert p.proc.returncode == 0


def _two_free_ports() -> int:
    """A port whose next one is free too (both bound once to be sure)."""
    for _ in range(100):
        base = free_port()
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base))
                b.bind(("127.0.0.1", base + 1))
        except OSError:
            continue
        return base
    raise RuntimeError("no two consecutive free ports")


def test_cli_bad_input_is_one_line(tmp_path):
    import subprocess

    for args in (
        ["--gpu", "Z80"],
        ["--model", "nope"],
        ["--fault-error", "503"],
        ["--model", "llama-3.1-70b", "--gpu", "T4"],
        ["--profile", "warp"],
    ):
        r = subprocess.run(gantry_cmd("sim", *args), capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, args
        assert r.stderr.startswith("gantry: error:") and r.stderr.count("\n") == 1, r.stderr


def test_local_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<|endoftext|>": 1, "hello": 2, "world": 3, "model": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    with sim(tmp_path, "--profile", "instant", "--tokenizer", str(path)) as p:
        r = httpx.post(p.url + "/tokenize", json={"prompt": "hello world"}).json()
        assert r["tokens"] == [2, 3]
        r = httpx.post(p.url + "/v1/completions", json={"prompt": "hello", "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 1
