"""Reliability features end to end: idempotency, drain, breakers, fallbacks, shedding."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid

import httpx

from tests.helpers import gateway, metric_value, require_redis, sim, wait_until


def post(url: str, body: dict, **headers: str) -> httpx.Response:
    return httpx.post(url + "/v1/completions", json=body, headers=headers, timeout=30)


BODY = {"model": "m", "prompt": "x", "max_tokens": 5, "seed": 1}


def test_idempotency_memory_store(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--speedup", "10") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        key = str(uuid.uuid4())
        first = post(gw.url, BODY, **{"Idempotency-Key": key})
        again = post(gw.url, BODY, **{"Idempotency-Key": key})
        assert first.status_code == again.status_code == 200
        assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
        other = post(gw.url, {**BODY, "max_tokens": 6}, **{"Idempotency-Key": key})
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        # Streams are stored and replayed as streams.
        skey = str(uuid.uuid4())
        sbody = {**BODY, "stream": True}
        s1 = post(gw.url, sbody, **{"Idempotency-Key": skey})
        s2 = post(gw.url, sbody, **{"Idempotency-Key": skey})
        assert s1.text == s2.text and s2.text.endswith("data: [DONE]\n\n")
        assert s2.headers["content-type"].startswith("text/event-stream")
        # Concurrent duplicates: the second waits for the first, the engine runs it once.
        ckey = str(uuid.uuid4())
        slow = {**BODY, "max_tokens": 60, "ignore_eos": True}
        results: list[httpx.Response] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(post(gw.url, slow, **{"Idempotency-Key": ckey}))
            )
            for _ in range(3)
        ]
        before = metric_value(httpx.get(e.url + "/metrics").text, "vllm:request_success_total")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = metric_value(httpx.get(e.url + "/metrics").text, "vllm:request_success_total")
        assert after - before == 1
        assert len({r.text for r in results}) == 1
        assert post(gw.url, BODY, **{"Idempotency-Key": ""}).status_code == 400


def test_idempotency_shared_across_replicas_over_redis(tmp_path):
    redis = require_redis()
    prefix = f"gantry-test-{uuid.uuid4().hex[:8]}:"
    with sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e:
        cfg = tmp_path / "r.yaml"
        cfg.write_text(
            f"engines:\n  - url: {e.url}\nidempotency:\n  store: redis\n  key_prefix: '{prefix}'\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as a, gateway(tmp_path, "-c", str(cfg)) as b:
            key = str(uuid.uuid4())
            ra = post(a.url, BODY, **{"Idempotency-Key": key})
            rb = post(b.url, BODY, **{"Idempotency-Key": key})
            assert rb.json() == ra.json() and rb.headers["idempotent-replayed"] == "true"
            assert post(b.url, {**BODY, "seed": 2}, **{"Idempotency-Key": key}).status_code == 422
    r = redis.Redis(host="127.0.0.1", port=6379)
    for k in r.scan_iter(prefix + "*"):
        r.delete(k)


def test_sigterm_drains_in_flight_streams(tmp_path):
    """SIGTERM: readiness turns 503 at once; for readiness_delay_s new requests are still
    served (load balancers are still sending them); then the listener closes and the
    streams in flight run to their end."""
    env = {"GANTRY_SHUTDOWN__READINESS_DELAY_S": "2"}
    with (
        sim(tmp_path, "--served-model-name", "m") as e,
        gateway(tmp_path, "--engine", e.url, env=env) as gw,
    ):
        body = {"model": "m", "prompt": "x", "max_tokens": 600, "ignore_eos": True}

        async def stream(started: asyncio.Event) -> str:
            parts: list[str] = []
            async with (
                httpx.AsyncClient(timeout=60) as c,
                c.stream("POST", gw.url + "/v1/completions", json={**body, "stream": True}) as r,
            ):
                async for chunk in r.aiter_text():
                    parts.append(chunk)
                    if '"text"' in chunk:
                        started.set()  # a token arrived: this stream is in flight
            return "".join(parts)

        async def scenario() -> tuple[list[str], int, int]:
            started = [asyncio.Event() for _ in range(8)]
            tasks = [asyncio.create_task(stream(s)) for s in started]
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in started)), 60)
            gw.proc.send_signal(signal.SIGTERM)
            async with httpx.AsyncClient(timeout=30) as c:
                ready = 200
                for _ in range(200):  # until the signal is handled (bounded)
                    ready = (await c.get(gw.url + "/readyz")).status_code
                    if ready == 503:
                        break
                    await asyncio.sleep(0.01)
                short = {"model": "m", "prompt": "x", "max_tokens": 2}
                new = (await c.post(gw.url + "/v1/completions", json=short)).status_code
            return await asyncio.gather(*tasks), ready, new

        outs, ready, new = asyncio.run(scenario())
        assert ready == 503 and new == 200  # served during the readiness delay
        assert all(o.endswith("data: [DONE]\n\n") and '"error"' not in o for o in outs)
        assert gw.proc.wait(30) == 0
        assert "drained in" in gw.logs()


def test_sigterm_without_delay_closes_the_listener_and_finishes_streams(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        body = {"model": "m", "prompt": "x", "max_tokens": 600, "ignore_eos": True}

        async def scenario() -> tuple[int, str, str]:
            async with httpx.AsyncClient(timeout=60) as c:
                async with c.stream(
                    "POST", gw.url + "/v1/completions", json={**body, "stream": True}
                ) as r:
                    it = r.aiter_text()
                    await it.__anext__()  # in flight
                    gw.proc.send_signal(signal.SIGTERM)
                    async with httpx.AsyncClient(timeout=30) as other:
                        # readiness_delay_s is 0 in tests: the listener closes at once
                        for _ in range(200):
                            try:
                                await other.get(gw.url + "/health")
                            except httpx.ConnectError:
                                break
                            await asyncio.sleep(0.01)
                    rest = "".join([x async for x in it])
                return r.status_code, rest, gw.logs()

        status, rest, _ = asyncio.run(scenario())
        assert status == 200 and rest.endswith("data: [DONE]\n\n")
        assert gw.proc.wait(30) == 0


def test_hung_engine_times_out_fails_over_and_opens_breaker(tmp_path):
    with (
        sim(
            tmp_path, "--served-model-name", "m", "--profile", "instant", "--fault-hang-rate", "1"
        ) as bad,
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as good,
    ):
        cfg = tmp_path / "h.yaml"
        cfg.write_text(
            f"engines:\n  - url: {bad.url}\n    name: bad\n  - url: {good.url}\n    name: good\n"
            "routing:\n  policy: round_robin\n"
            "timeouts:\n  attempt_s: 0.5\n  ttft_s: 0.5\n"
            "breaker:\n  failure_threshold: 2\n  cooldown_s: 60\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            for stream in (False, True, False, False, True, False):
                r = post(gw.url, {"model": "m", "prompt": "x", "max_tokens": 2, "stream": stream})
                assert r.status_code == 200 and "error" not in r.text
            m = httpx.get(gw.url + "/metrics").text
            assert metric_value(m, "gantry_breaker_state", engine="bad") == 2
            assert metric_value(m, "gantry_upstream_errors_total", engine="bad") >= 2
            t = time.monotonic()
            assert post(gw.url, {"model": "m", "prompt": "x", "max_tokens": 2}).status_code == 200
            assert time.monotonic() - t < 0.4  # the open breaker skips the hung engine
            assert "circuit breaker for engine bad: closed -> open" in gw.logs()


def test_fallback_chain_and_graceful_degradation(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "small", "--profile", "instant") as small,
        sim(tmp_path, "--served-model-name", "big", "--profile", "instant") as big,
    ):
        cfg = tmp_path / "f.yaml"
        cfg.write_text(
            f"engines:\n  - url: {big.url}\n    name: big\n  - url: {small.url}\n"
            "    name: small\nfallbacks:\n  big: [small]\n"
            "health:\n  interval_s: 0.2\n  failure_threshold: 1\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            assert post(gw.url, {"model": "big", "prompt": "x"}).json()["model"] == "big"
            big.stop(9)
            wait_until(lambda: "model big: no healthy" in httpx.get(gw.url + "/readyz").text)
            r = post(gw.url, {"model": "big", "prompt": "x"})
            assert r.status_code == 200 and r.json()["model"] == "small"
            small.stop(9)
            wait_until(lambda: "model small: no healthy" in httpx.get(gw.url + "/readyz").text)
            r = post(gw.url, {"model": "big", "prompt": "x"})
            assert r.status_code == 503 and "retry-after" in r.headers
            assert "No healthy engine" in r.json()["error"]["message"]


def test_overload_sheds_with_retry_after(tmp_path):
    with sim(tmp_path, "--served-model-name", "m", "--speedup", "5") as e:
        cfg = tmp_path / "o.yaml"
        cfg.write_text(
            f"engines:\n  - url: {e.url}\nadmission:\n  max_inflight_per_engine: 4\n"
            "  max_waiting_per_model: 4\n  queue_timeout_s: 5\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:

            async def one(c: httpx.AsyncClient) -> httpx.Response:
                return await c.post(
                    gw.url + "/v1/completions",
                    json={"model": "m", "prompt": "x", "max_tokens": 40, "ignore_eos": True},
                )

            async def burst() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=30) as c:
                    return await asyncio.gather(*(one(c) for _ in range(30)))

            rs = asyncio.run(burst())
            codes = [r.status_code for r in rs]
            assert codes.count(200) >= 8 and codes.count(503) >= 10
            assert set(codes) <= {200, 503}
            shed = [r for r in rs if r.status_code == 503]
            assert all(r.headers.get("retry-after") for r in shed)
            assert all(r.json()["error"]["type"] == "service_unavailable" for r in shed)
            m = httpx.get(gw.url + "/metrics").text
            assert metric_value(m, "gantry_requests_shed_total") >= 10


def test_priority_and_timeout_headers_are_validated(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        assert post(gw.url, BODY, **{"x-priority": "urgent"}).status_code == 400
        assert post(gw.url, BODY, **{"x-request-timeout": "-3"}).status_code == 400
        assert (
            post(gw.url, BODY, **{"x-priority": "-5", "x-request-timeout": "10"}).status_code == 200
        )


def test_per_request_timeout_override(tmp_path):
    with (
        sim(
            tmp_path,
            "--served-model-name",
            "m",
            "--fault-latency-ms",
            "1500",
            "--profile",
            "instant",
        ) as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        t = time.monotonic()
        r = post(gw.url, BODY, **{"x-request-timeout": "0.5"})
        assert r.status_code in (503, 504) and time.monotonic() - t < 1.4
        assert json.loads(r.text)["error"]["message"]
