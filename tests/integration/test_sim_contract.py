"""The simulator against vLLM's contract, over real HTTP on loopback."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.helpers import Proc, metric_value, sim


def sse_events(resp: httpx.Response) -> list[str]:
    raw = resp.read().decode()
    assert raw.endswith("data: [DONE]\n\n")
    blocks = raw.split("\n\n")[:-1]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks), blocks
    return [b[6:] for b in blocks]


def test_openai_sdk_chat_and_completions(fast_sim: Proc):
    client = openai.OpenAI(base_url=fast_sim.url + "/v1", api_key="x")
    chat = client.chat.completions.create(
        model="qwen", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0
    comp = client.completions.create(model="qwen-alias", prompt="Once upon a time")
    assert comp.model == "qwen"  # responses use the first served name
    assert comp.usage.completion_tokens == 16  # vLLM's default max_tokens for completions
    assert comp.choices[0].finish_reason == "length"
    models = client.models.list()
    assert [m.id for m in models.data] == ["qwen", "qwen-alias"]
    assert models.data[0].model_extra["max_model_len"] == 32768


def test_openai_sdk_streaming_sync_and_async(fast_sim: Proc):
    client = openai.OpenAI(base_url=fast_sim.url + "/v1", api_key="x")
    chunks = list(
        client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-2].choices[0].finish_reason == "length"

    async def run() -> str:
        ac = openai.AsyncOpenAI(base_url=fast_sim.url + "/v1", api_key="x")
        text = ""
        async for c in await ac.completions.create(
            model="qwen", prompt="abc", max_tokens=6, stream=True
        ):
            text += c.choices[0].text
        await ac.close()
        return text

    import asyncio

    assert asyncio.run(run())


def test_raw_chat_sse_matches_vllm_shapes(fast_sim: Proc):
    body = {
        "model": "qwen",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", fast_sim.url + "/v1/chat/completions", json=body, headers={"X-Request-Id": "abc123"}
    ) as r:
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        events = sse_events(r)
    chunks = [json.loads(e) for e in events[:-1]]
    first = chunks[0]
    assert first["id"] == "chatcmpl-abc123"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert set(first) == {
        "id",
        "object",
        "created",
        "model",
        "choices",
        "prompt_token_ids",
        "prompt_text",
    }
    token = chunks[1]
    assert set(token) == {"id", "object", "created", "model", "choices", "kv_transfer_params"}
    assert set(token["choices"][0]) == {"index", "delta", "logprobs", "finish_reason", "token_ids"}
    last = chunks[-2]
    assert last["choices"][0]["finish_reason"] == "length"
    assert "weight_versions" in last["choices"][0] and "system_fingerprint" not in last
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["system_fingerprint"].startswith("vllm-0.33.0-")
    assert list(usage["usage"]) == [
        "prompt_tokens",
        "total_tokens",
        "completion_tokens",
        "prompt_tokens_details",
    ]


def test_raw_completion_sse_without_usage_has_fingerprint_on_last(fast_sim: Proc):
    body = {"model": "qwen", "prompt": "x", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", fast_sim.url + "/v1/completions", json=body) as r:
        chunks = [json.loads(e) for e in sse_events(r)[:-1]]
    assert len(chunks) == 2  # no role chunk, no usage chunk
    assert chunks[0]["choices"][0]["text"] and "stop_reason" in chunks[0]["choices"][0]
    assert chunks[-1]["system_fingerprint"]


def test_continuous_usage_and_n_choices(fast_sim: Proc):
    body = {
        "model": "qwen",
        "prompt": "x",
        "max_tokens": 3,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    with httpx.stream("POST", fast_sim.url + "/v1/completions", json=body) as r:
        chunks = [json.loads(e) for e in sse_events(r)[:-1]]
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}
    assert all("usage" in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def test_temperature_zero_and_seed_are_deterministic(fast_sim: Proc):
    def text(**kw: object) -> str:
        r = httpx.post(
            fast_sim.url + "/v1/completions",
            json={"model": "qwen", "prompt": "same prompt", "max_tokens": 12, **kw},
        )
        return str(r.json()["choices"][0]["text"])

    assert text(temperature=0) == text(temperature=0)
    assert text(seed=7) == text(seed=7)
    assert text(seed=7) != text(seed=8)


def test_stop_ignore_eos_min_tokens(fast_sim: Proc):
    r = httpx.post(
        fast_sim.url + "/v1/completions",
        json={"model": "qwen", "prompt": "p", "max_tokens": 200, "ignore_eos": True, "seed": 1},
    )
    assert r.json()["usage"]["completion_tokens"] == 200
    text = r.json()["choices"][0]["text"]
    word = text.split()[3]
    r = httpx.post(
        fast_sim.url + "/v1/completions",
        json={
            "model": "qwen",
            "prompt": "p",
            "max_tokens": 200,
            "ignore_eos": True,
            "seed": 1,
            "stop": [word],
        },
    )
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == word
    assert word not in choice["text"]


def test_json_mode(fast_sim: Proc):
    client = openai.OpenAI(base_url=fast_sim.url + "/v1", api_key="x")
    r = client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "json"}],
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize(
    ("path", "body", "status", "type_", "needle"),
    [
        (
            "/v1/completions",
            {"model": "nope", "prompt": "x"},
            404,
            "NotFoundError",
            "The model `nope` does not exist. Valid aliases: qwen, qwen-alias.",
        ),
        (
            "/v1/completions",
            {"prompt": "x", "n": 0},
            400,
            "BadRequestError",
            "(parameter=n, value=0)",
        ),
        (
            "/v1/completions",
            {"prompt": "x", "max_tokens": 99999},
            400,
            "BadRequestError",
            "max_tokens=99999 cannot be greater than max_model_len=32768",
        ),
        (
            "/v1/completions",
            {"prompt": "x", "temperature": -1},
            400,
            "BadRequestError",
            "(parameter=temperature, value=-1.0)",
        ),
        (
            "/v1/completions",
            {"prompt": "word " * 40000},
            400,
            "BadRequestError",
            "This model's maximum context length is 32768 tokens. However, your prompt contains",
        ),
        ("/v1/chat/completions", {"model": "qwen"}, 400, "Bad Request", "validation error"),
        (
            "/v1/completions",
            {"prompt": "x", "stream_options": {"include_usage": True}},
            400,
            "BadRequestError",
            "Stream options can only be defined when `stream=True`",
        ),
    ],
)
def test_errors_like_vllm(fast_sim: Proc, path, body, status, type_, needle):
    r = httpx.post(fast_sim.url + path, json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["type"] == type_ and err["code"] == status and needle in err["message"]


def test_prompt_plus_max_tokens_overflow_is_clamped(fast_sim: Proc):
    r = httpx.post(
        fast_sim.url + "/v1/completions",
        json={"prompt": list(range(300, 300 + 32760)), "max_tokens": 100, "ignore_eos": True},
    )
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 8


def test_bad_json_and_content_type(fast_sim: Proc):
    r = httpx.post(
        fast_sim.url + "/v1/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "Bad Request"
    r = httpx.post(
        fast_sim.url + "/v1/completions", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 400
    assert httpx.get(fast_sim.url + "/nope").json() == {"detail": "Not Found"}
    assert httpx.get(fast_sim.url + "/v1/completions").status_code == 405


def test_small_endpoints_and_tokenize(fast_sim: Proc):
    h = httpx.get(fast_sim.url + "/health")
    assert h.status_code == 200 and h.content == b""
    assert httpx.get(fast_sim.url + "/ping").status_code == 200
    assert httpx.get(fast_sim.url + "/version").json() == {"version": "0.33.0"}
    assert "server_load" in httpx.get(fast_sim.url + "/load").json()
    t = httpx.post(fast_sim.url + "/tokenize", json={"prompt": "Hello world"}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 32768
    d = httpx.post(fast_sim.url + "/detokenize", json={"tokens": t["tokens"]}).json()
    assert d == {"prompt": "Hello world"}
    assert httpx.get(fast_sim.url + "/kv_event_sources").json() == {}


def test_metrics_parse_with_vllm_names(fast_sim: Proc):
    from prometheus_client.parser import text_string_to_metric_families

    httpx.post(fast_sim.url + "/v1/completions", json={"prompt": "metric test", "max_tokens": 4})
    text = httpx.get(fast_sim.url + "/metrics").text
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:request_time_per_output_token_seconds",
        "vllm:request_prompt_tokens",
        "vllm:request_generation_tokens",
        "vllm:iteration_tokens_total",
    ):
        assert name in fams, name
    assert fams["vllm:num_requests_running"].type == "gauge"
    assert fams["vllm:e2e_request_latency_seconds"].type == "histogram"
    for counter in (
        "vllm:prefix_cache_queries",
        "vllm:prefix_cache_hits",
        "vllm:prompt_tokens",
        "vllm:generation_tokens",
        "vllm:request_success",
        "vllm:num_preemptions",
    ):
        assert fams[counter].type == "counter", counter
    assert metric_value(text, "vllm:request_success_total", finished_reason="length") >= 1
    ttft = [
        s for s in fams["vllm:time_to_first_token_seconds"].samples if s.name.endswith("_bucket")
    ]
    assert ttft[0].labels["le"] == "0.001" and ttft[0].labels["model_name"] == "qwen"
    assert ttft[0].labels["engine"] == "0"


def test_prefix_cache_hits_and_cached_tokens(fast_sim: Proc):
    prompt = "shared system prompt " * 40
    httpx.post(fast_sim.url + "/v1/completions", json={"prompt": prompt + "a", "max_tokens": 1})
    r = httpx.post(fast_sim.url + "/v1/completions", json={"prompt": prompt + "b", "max_tokens": 1})
    cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0 and cached % 16 == 0


def test_api_key_protects_v1_only(tmp_path):
    with sim(tmp_path, "--profile", "instant", "--api-key", "k1", "--api-key", "k2") as p:
        r = httpx.post(p.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        r = httpx.post(
            p.url + "/v1/completions", json={"prompt": "x"}, headers={"Authorization": "bearer k2"}
        )
        assert r.status_code == 200
        assert httpx.get(p.url + "/metrics").status_code == 200
        assert httpx.post(p.url + "/tokenize", json={"prompt": "x"}).status_code == 200
        assert httpx.get(p.url + "/v1/models").status_code == 401
