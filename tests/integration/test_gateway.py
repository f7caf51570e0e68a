"""The gateway in front of real simulator subprocesses."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx
import openai
import pytest

from gantry.netutil import free_port
from tests.helpers import (
    Proc,
    gantry_cmd,
    gateway,
    metric_value,
    sim,
    wait_http,
    wait_until,
)


@pytest.fixture(scope="module")
def stack(module_tmp: Path) -> Iterator[tuple[Proc, list[Proc]]]:
    with (
        sim(module_tmp, "--served-model-name", "qwen", "--speedup", "10", "--enable-admin") as a,
        sim(module_tmp, "--served-model-name", "qwen", "--speedup", "10", "--enable-admin") as b,
    ):
        cfg = module_tmp / "gantry.yaml"
        cfg.write_text(
            f"engines:\n  - url: {a.url}\n    name: a\n  - url: {b.url}\n    name: b\n"
            "aliases:\n  gpt-4: qwen\n"
            "limits:\n  max_body_bytes: 200000\n"
            "timeouts:\n  keepalive_interval_s: 0.2\n"
            "health:\n  interval_s: 0.3\n  failure_threshold: 1\n"
        )
        with gateway(module_tmp, "-c", str(cfg)) as gw:
            yield gw, [a, b]


def reset_faults(engines: list[Proc]) -> None:
    for e in engines:
        httpx.post(e.url + "/sim/faults", json={"reset": True})


def test_openai_sdk_through_gateway(stack):
    gw, _ = stack
    # Seeded, and run to max_tokens whatever the seed: nothing below depends on chance.
    fixed = {"seed": 7, "extra_body": {"ignore_eos": True}}
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **fixed}
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
    r = client.chat.completions.create(model="qwen", **chat)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    text = r.choices[0].message.content
    assert text
    chunks = list(
        client.completions.create(model="qwen", prompt="x", max_tokens=3, stream=True, **fixed)
    )
    assert chunks[-1].choices[0].finish_reason == "length"

    async def run() -> list[openai.types.chat.ChatCompletionChunk]:
        async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="none") as ac:
            stream = await ac.chat.completions.create(
                model="gpt-4", stream=True, stream_options={"include_usage": True}, **chat
            )
            return [c async for c in stream]

    # The same seeded request through the alias, streamed: the same answer, in chunks.
    got = asyncio.run(run())
    assert got[0].choices[0].delta.role == "assistant"
    assert got[-2].choices[0].finish_reason == "length"
    assert got[-1].choices == [] and got[-1].usage.completion_tokens == 5
    assert "".join(c.choices[0].delta.content or "" for c in got[:-1]) == text


def test_usage_chunk_only_when_asked_and_extra_fields_pass_through(stack):
    gw, _ = stack
    body = {
        "model": "qwen",
        "prompt": "x",
        "max_tokens": 3,
        "stream": True,
        "ignore_eos": True,
        "min_tokens": 3,
    }
    raw = httpx.post(gw.url + "/v1/completions", json=body).text
    assert '"choices":[]' not in raw and raw.endswith("data: [DONE]\n\n")
    body["stream_options"] = {"include_usage": True}
    raw = httpx.post(gw.url + "/v1/completions", json=body).text
    assert raw.count('"choices":[]') == 1


def test_streaming_is_incremental(tmp_path):
    with sim(tmp_path, "--served-model-name", "m") as e, gateway(tmp_path, "--engine", e.url) as gw:
        arrivals = []
        with httpx.stream(
            "POST",
            gw.url + "/v1/completions",
            json={
                "model": "m",
                "prompt": "x",
                "max_tokens": 30,
                "ignore_eos": True,
                "stream": True,
            },
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic())
        assert len(arrivals) == 30
        # ~15 ms per token on the simulated L4: chunks are spread over time, not one burst.
        assert arrivals[-1] - arrivals[0] > 0.2
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert sorted(gaps)[len(gaps) // 2] > 0.005


def test_keepalive_comments_before_first_token(stack):
    gw, engines = stack
    for e in engines:
        httpx.post(e.url + "/sim/faults", json={"reset": True, "latency_ms": 700})
    try:
        raw = httpx.post(
            gw.url + "/v1/completions",
            timeout=10,
            json={"model": "qwen", "prompt": "x", "max_tokens": 2, "stream": True},
        ).text
    finally:
        reset_faults(engines)
    assert raw.startswith(": keep-alive\n\n")
    assert raw.index("data: {") > raw.index(": keep-alive")


def test_request_id_is_honoured_and_returned(stack):
    gw, _ = stack
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        headers={"X-Request-Id": "req-42"},
        json={"model": "qwen", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    )
    assert r.headers["x-request-id"] == "req-42"
    assert r.json()["id"] == "chatcmpl-req-42"  # the engine saw it too
    r = httpx.get(gw.url + "/v1/models")
    assert len(r.headers["x-request-id"]) == 32


def test_models_union_and_alias(stack):
    gw, _ = stack
    data = httpx.get(gw.url + "/v1/models").json()["data"]
    assert {m["id"] for m in data} == {"qwen", "gpt-4"}
    assert next(m for m in data if m["id"] == "qwen")["max_model_len"] == 32768
    r = httpx.post(
        gw.url + "/v1/completions", json={"model": "gpt-4", "prompt": "x", "max_tokens": 1}
    )
    assert r.status_code == 200 and r.json()["model"] == "gpt-4"


def test_tokenize_detokenize_through_gateway(stack):
    gw, _ = stack
    t = httpx.post(gw.url + "/tokenize", json={"model": "qwen", "prompt": "Hello"}).json()
    assert (
        httpx.post(gw.url + "/detokenize", json={"model": "qwen", "tokens": t["tokens"]}).json()[
            "prompt"
        ]
        == "Hello"
    )


BAD = [
    ("malformed json", "/v1/chat/completions", b"{not json", "application/json", 400),
    ("not an object", "/v1/chat/completions", b"[1,2]", "application/json", 400),
    ("missing messages", "/v1/chat/completions", b'{"model":"qwen"}', "application/json", 400),
    (
        "wrong type",
        "/v1/chat/completions",
        b'{"model":"qwen","messages":[{"role":"user","content":"x"}],"stream":"yes"}',
        "application/json",
        400,
    ),
    (
        "wrong max_tokens type",
        "/v1/completions",
        b'{"model":"qwen","prompt":"x","max_tokens":"many"}',
        "application/json",
        400,
    ),
    ("missing model", "/v1/completions", b'{"prompt":"x"}', "application/json", 400),
    ("unknown model", "/v1/completions", b'{"model":"nope","prompt":"x"}', "application/json", 404),
    ("wrong content type", "/v1/completions", b'{"model":"qwen","prompt":"x"}', "text/plain", 415),
    (
        "oversized body",
        "/v1/completions",
        b'{"model":"qwen","prompt":"' + b"x" * 300_000 + b'"}',
        "application/json",
        413,
    ),
    (
        "engine-side validation",
        "/v1/completions",
        b'{"model":"qwen","prompt":"x","n":0}',
        "application/json",
        400,
    ),
    ("unknown path", "/v1/nope", b"{}", "application/json", 404),
    (
        "non-string model on tokenize",
        "/tokenize",
        b'{"model": [null], "prompt": "x"}',
        "application/json",
        400,
    ),
]


@pytest.mark.parametrize(("name", "path", "body", "ctype", "status"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_openai_error(stack, name, path, body, ctype, status):
    gw, _ = stack
    r = httpx.post(gw.url + path, content=body, headers={"content-type": ctype})
    assert r.status_code == status
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and "type" in err
    assert httpx.get(gw.url + "/v1/completions").status_code == 405


def test_client_disconnect_cancels_upstream(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--enable-admin") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        with httpx.stream(
            "POST",
            gw.url + "/v1/completions",
            json={
                "model": "m",
                "prompt": "x",
                "max_tokens": 3000,
                "ignore_eos": True,
                "stream": True,
            },
        ) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 4:
                    break

        def aborted() -> str | None:
            text = httpx.get(e.url + "/metrics").text
            done = metric_value(text, "vllm:request_success_total", finished_reason="abort")
            return text if done == 1 else None

        text = wait_until(aborted, 30, "the engine aborting the request")
        assert metric_value(text, "vllm:num_requests_running") == 0
        wait_until(
            lambda: (
                metric_value(httpx.get(gw.url + "/metrics").text, "gantry_client_disconnects_total")
                == 1
            ),
            30,
            "the gateway counting the disconnect",
        )


def test_failover_on_engine_errors(stack):
    gw, engines = stack
    httpx.post(engines[0].url + "/sim/faults", json={"reset": True, "error_rate": {"503": 1}})
    try:
        for _ in range(10):
            r = httpx.post(
                gw.url + "/v1/completions", json={"model": "qwen", "prompt": "x", "max_tokens": 1}
            )
            assert r.status_code == 200
    finally:
        reset_faults(engines)
    m = httpx.get(gw.url + "/metrics").text
    assert metric_value(m, "gantry_upstream_errors_total", engine="a", kind="http_503") >= 1


def test_gateway_metrics(stack):
    gw, _ = stack
    httpx.post(
        gw.url + "/v1/completions",
        json={"model": "qwen", "prompt": "x", "max_tokens": 2, "stream": True},
    )
    text = httpx.get(gw.url + "/metrics").text
    assert (
        metric_value(text, "gantry_requests_total", endpoint="/v1/completions", status="200") >= 1
    )
    assert metric_value(text, "gantry_engine_up", engine="a") == 1
    assert metric_value(text, "gantry_tokens_total", kind="completion") >= 2
    assert metric_value(text, "gantry_time_to_first_token_seconds_count") >= 1
    assert metric_value(text, "gantry_routing_decisions_total") >= 1
    assert "vllm:" not in text


def test_readiness_as_engines_die_and_recover(tmp_path):
    port = free_port()
    with sim(tmp_path, "--served-model-name", "m", "--profile", "instant", port=port) as e:
        cfg = tmp_path / "g.yaml"
        cfg.write_text(
            f"engines:\n  - url: {e.url}\nhealth:\n  interval_s: 0.2\n  failure_threshold: 1\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            assert httpx.get(gw.url + "/readyz").json() == {"ready": True, "reasons": []}
            e.stop(9)

            def not_ready() -> httpx.Response | None:
                r = httpx.get(gw.url + "/readyz")
                return r if r.status_code != 200 else None

            r = wait_until(not_ready, 30, "/readyz turning 503")
            assert r.status_code == 503 and "model m" in r.json()["reasons"][0]
            assert httpx.get(gw.url + "/health").status_code == 200  # alive all the same
            r = httpx.post(gw.url + "/v1/completions", json={"model": "m", "prompt": "x"})
            assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
            assert "retry-after" in r.headers
            with sim(tmp_path, "--served-model-name", "m", "--profile", "instant", port=port):
                wait_http(gw.url, 10, path="/readyz")
                r = httpx.post(gw.url + "/v1/completions", json={"model": "m", "prompt": "x"})
                assert r.status_code == 200


def test_engine_killed_requests_fail_over(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as a,
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as b,
        gateway(tmp_path, "--engine", a.url, "--engine", b.url, "--policy", "round_robin") as gw,
    ):
        a.stop(9)
        codes = [
            httpx.post(
                gw.url + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}
            ).status_code
            for _ in range(20)
        ]
        assert codes == [200] * 20


def test_config_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("routing:\n  policy: fastest\n")
    r = subprocess.run(gantry_cmd("config", "check", str(bad)), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "routing.policy" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("engines:\n  - url: http://127.0.0.1:9\n    api_key: topsecret\n")
    r = subprocess.run(gantry_cmd("config", "check", str(good)), capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout
    r = subprocess.run(
        gantry_cmd("config", "show", "-c", str(good)),
        capture_output=True,
        text=True,
        env={"GANTRY_PORT": "9999", "PATH": "/usr/bin"},
    )
    assert r.returncode == 0 and "topsecret" not in r.stdout and "***" in r.stdout
    assert "port: 9999" in r.stdout
    r = subprocess.run(gantry_cmd("serve", "--port", "99999"), capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("gantry: error: config: port")


def test_request_log_line_has_fields_and_no_prompt_text(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        secret = "my-credit-card-is-4111111111111111"
        httpx.post(
            gw.url + "/v1/completions",
            headers={"X-Request-Id": "log-check-1"},
            json={"model": "m", "prompt": secret, "max_tokens": 3},
        )
        gw.stop()
        lines = [json.loads(x) for x in gw.logs().splitlines() if x.startswith("{")]
    rec = next(x for x in lines if x.get("request_id") == "log-check-1")
    assert rec["event"] == "request" and rec["status"] == 200 and rec["engine"] == "engine-0"
    assert rec["prompt_tokens"] > 0 and rec["completion_tokens"] == 3
    assert rec["latency_ms"] > 0 and rec["model"] == "m"
    assert secret not in gw.logs()


def test_openapi_document(stack):
    gw, _ = stack
    doc = httpx.get(gw.url + "/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/v1/chat/completions" in doc["paths"]
    assert json.dumps(doc)


def test_oversized_headers_get_431(stack):
    gw, _ = stack
    r = httpx.get(gw.url + "/v1/models", headers={f"x-pad-{i}": "y" * 200 for i in range(90)})
    assert r.status_code == 431 and r.json()["error"]["message"]


def test_refusals_by_the_http_front_are_counted_and_logged(tmp_path):
    """Requests the front refuses before any handler (431, 414, malformed) still end in one
    gantry_requests_total sample and one log line each."""
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        httpx.get(gw.url + "/v1/models", headers={f"x-pad-{i}": "y" * 200 for i in range(90)})
        httpx.get(gw.url + "/" + "a" * 9000)
        with socket.create_connection(("127.0.0.1", gw.port)) as s:
            s.sendall(b"GARBAGE\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 400")
        text = httpx.get(gw.url + "/metrics").text
        for status in ("431", "414", "400"):
            assert metric_value(text, "gantry_requests_total", status=status) == 1, status
        gw.stop()
        lines = [json.loads(x) for x in gw.logs().splitlines() if x.startswith('{"request_id"')]
    assert sorted(x["status"] for x in lines if x["status"] >= 400) == [400, 414, 431]


def stalled_body_answer(port: int, bound: float = 20.0) -> tuple[h11.Response, bytes]:
    """POST a body of 100 bytes, send 1, then only read: the server's answer and its body.

    Returns once the server has closed the connection. ``bound`` is generous next to the
    body timeout the test sets, and below the 30 s after which idle connections close
    anyway, so a server that answers 408 but keeps the connection open fails."""
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(
        method="POST",
        target="/v1/completions",
        headers=[("Host", "gw"), ("Content-Type", "application/json"), ("Content-Length", "100")],
    )
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=bound) as s:
        s.sendall(conn.send(head) + conn.send(h11.Data(data=b"{")))
        try:
            while data := s.recv(65536):
                received += data
        except ConnectionResetError:
            pass  # closed with a reset rather than a FIN: closed all the same
        except TimeoutError:
            raise AssertionError(f"connection still open; received {bytes(received)!r}") from None
    conn.receive_data(bytes(received))
    conn.receive_data(b"")  # the server closed the connection
    response, body = None, b""
    while not isinstance(event := conn.next_event(), h11.ConnectionClosed):
        assert event is not h11.NEED_DATA, f"incomplete answer: {bytes(received)!r}"
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
    assert response is not None, bytes(received)
    return response, body


def test_slow_client_body_gets_408(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "--engine", e.url, env={"GANTRY_SECURITY__BODY_TIMEOUT_S": "0.5"}) as gw,
    ):
        response, body = stalled_body_answer(gw.port)
        assert response.status_code == 408
        err = json.loads(body)["error"]
        assert err["type"] == "timeout_error" and isinstance(err["message"], str)
        assert httpx.get(gw.url + "/health").status_code == 200  # still serving
