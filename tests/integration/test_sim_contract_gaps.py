"""The simulator against the rest of vLLM 0.33's contract, over real HTTP on loopback.

Each test names the vLLM code whose behaviour it mirrors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Proc, metric_value, sim

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]
MSG = [{"role": "user", "content": "weather?"}]


@pytest.fixture(scope="module")
def tool_sim(module_tmp: Path) -> Iterator[Proc]:
    """An engine started with vLLM's tool-calling flags."""
    with sim(
        module_tmp,
        "--profile",
        "instant",
        "--served-model-name",
        "qwen",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ) as p:
        yield p


def _chat(url: str, **body: object) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"messages": MSG, **body})


def _error(r: httpx.Response, status: int = 400) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == status
    return str(err["message"])


# -- 1. tool calling --------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (
            None,
            '"auto" tool choice requires --enable-auto-tool-choice and '
            "--tool-call-parser to be set",
        ),
        (
            "auto",
            '"auto" tool choice requires --enable-auto-tool-choice and '
            "--tool-call-parser to be set",
        ),
        ("required", 'tool_choice="required" requires --tool-call-parser to be set'),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            'tool_choice=function "get_weather" requires --tool-call-parser to be set',
        ),
    ],
)
def test_tools_without_parser_are_refused(fast_sim: Proc, choice: object, message: str):
    """vllm/renderers/online_renderer.py::OnlineRenderer.render_chat: without a tool
    parser, "auto" needs both flags and a forced choice needs the parser."""
    body: dict[str, object] = {"tools": TOOLS}
    if choice is not None:
        body["tool_choice"] = choice
    assert _error(_chat(fast_sim.url, **body)) == message
    # tool_choice "none" ignores the tools and answers text
    r = _chat(fast_sim.url, tools=TOOLS, tool_choice="none", max_tokens=4)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"tools": []},
            "`tools` must not be an empty array. Either provide at least one tool or omit "
            "the field entirely. (parameter=tools)",
        ),
        (
            {"tool_choice": "required"},
            "When using `tool_choice`, `tools` must be set. (parameter=tool_choice)",
        ),
        (
            {"tools": TOOLS, "tool_choice": "sometimes"},
            "Invalid value for `tool_choice`: sometimes! Only named tools, "
            '"none", "auto" or "required" are supported. (parameter=tool_choice)',
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "The tool specified in `tool_choice` does not match any of the specified "
            "`tools` (parameter=tool_choice)",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {}}},
            "Expected field `name` in `function` in `tool_choice`! Correct usage: "
            '`{"type": "function", "function": {"name": "my_function"}}` '
            "(parameter=tool_choice.function.name)",
        ),
    ],
)
def test_bad_tool_usage_wording(tool_sim: Proc, body: dict[str, object], message: str):
    """chat_completion/protocol.py::ChatCompletionRequest.check_tool_usage."""
    assert _error(_chat(tool_sim.url, **body)) == message


def test_forced_and_auto_calls_with_parser(tool_sim: Proc):
    """chat_completion/serving.py: a forced call (named or "required") answers
    ``content: ""``; "auto" lets the parser extract a call (``finish_reason: tool_calls``)."""
    client = openai.OpenAI(base_url=tool_sim.url + "/v1", api_key="x")
    named = client.chat.completions.create(
        model="qwen",
        messages=MSG,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    msg = named.choices[0].message
    assert msg.content == "" and named.choices[0].finish_reason == "stop"
    assert msg.tool_calls and msg.tool_calls[0].function.name == "get_weather"
    assert set(json.loads(msg.tool_calls[0].function.arguments)) == {"city", "days"}
    required = client.chat.completions.create(
        model="qwen",
        messages=MSG,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
    )
    assert required.choices[0].message.content == ""
    assert required.choices[0].finish_reason == "tool_calls"
    auto = client.chat.completions.create(model="qwen", messages=MSG, tools=TOOLS)  # type: ignore[arg-type]
    assert auto.choices[0].finish_reason == "tool_calls"
    assert auto.choices[0].message.tool_calls
    call = auto.choices[0].message.tool_calls[0]
    # after the tool's result, the model answers in text
    follow = client.chat.completions.create(
        model="qwen",
        messages=[
            *MSG,
            {"role": "assistant", "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],  # type: ignore[list-item]
        tools=TOOLS,  # type: ignore[arg-type]
        max_tokens=5,
    )
    assert follow.choices[0].message.content and not follow.choices[0].message.tool_calls
    stream = client.chat.completions.create(
        model="qwen",
        messages=MSG,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        stream=True,
    )
    args = "".join(
        c.choices[0].delta.tool_calls[0].function.arguments or ""  # type: ignore[union-attr]
        for c in stream
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert "city" in json.loads(args)


# -- 6. request ranges --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"temperature": -0.5}, "temperature must be non-negative, got -0.5."),
        ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2], got 2.5."),
        ({"frequency_penalty": -3}, "frequency_penalty must be in [-2, 2], got -3.0."),
        ({"repetition_penalty": 0}, "repetition_penalty must be greater than zero, got 0.0."),
        ({"top_k": -2}, "top_k must be 0 (disable), or at least 1, got -2."),
        ({"min_p": 1.5}, "min_p must be in [0, 1], got 1.5."),
        (
            {"min_tokens": 10, "max_tokens": 5},
            "min_tokens must be less than or equal to max_tokens=5, got 10.",
        ),
        (
            {"cache_salt": ""},
            "Parameter 'cache_salt' must be a non-empty string if provided.",
        ),
        (
            {"response_format": {"type": "json_schema"}},
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
        ),
    ],
)
def test_sampling_ranges_like_vllm(fast_sim: Proc, body: dict[str, object], message: str):
    """vllm/sampling_params.py::SamplingParams._verify_args, validate_cache_salt and
    ChatCompletionRequest.validate_response_format: 400 with the parameter named."""
    r = _chat(fast_sim.url, **body)
    text = _error(r)
    assert text.startswith(message), text
    assert "(parameter=" in text
    # in range: accepted
    ok = _chat(fast_sim.url, max_tokens=3, top_k=-1, min_p=0.5, presence_penalty=2)
    assert ok.status_code == 200


# -- 5. router-facing extras --------------------------------------------------------


def test_load_reset_prefix_cache_and_orca_header(tmp_path: Path):
    """serve/instrumentator/basic.py (/load moves only with --enable-server-load-tracking),
    the dev-mode /reset_prefix_cache answer, serve/utils/orca_metrics.py (ORCA header on
    non-streaming answers when asked)."""
    with sim(tmp_path, "--profile", "instant", "--enable-admin") as p:
        r = httpx.post(
            p.url + "/v1/completions",
            json={"prompt": "x", "max_tokens": 2},
            headers={"endpoint-load-metrics-format": "TEXT"},
        )
        value = r.headers["endpoint-load-metrics"]
        assert value.startswith("TEXT named_metrics.kv_cache_usage_perc=")
        assert "named_metrics.num_requests_waiting=0.0" in value
        r = httpx.post(
            p.url + "/v1/completions",
            json={"prompt": "x", "max_tokens": 2},
            headers={"endpoint-load-metrics-format": "JSON"},
        )
        body = json.loads(r.headers["endpoint-load-metrics"].removeprefix("JSON "))
        assert set(body["named_metrics"]) == {"kv_cache_usage_perc", "num_requests_waiting"}
        plain = httpx.post(p.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert "endpoint-load-metrics" not in plain.headers
        assert httpx.post(p.url + "/reset_prefix_cache").json() == {"success": True}
        assert httpx.get(p.url + "/load").json() == {"server_load": 0}


def test_queue_limits_answer_503_and_are_counted(tmp_path: Path):
    """v1/engine/async_llm.py::AsyncLLM.check_admission: unfinished requests (n counted)
    beyond --max-num-queued-reqs are refused with 503, before any byte is streamed."""
    with sim(
        tmp_path,
        "--speedup",
        "0.05",  # slow model clock: the first request is still running
        "--max-num-queued-reqs",
        "2",
        "--enable-server-load-tracking",
    ) as p:
        with httpx.stream(
            "POST",
            p.url + "/v1/completions",
            json={"prompt": "x", "max_tokens": 500, "ignore_eos": True, "n": 2, "stream": True},
        ) as held:
            assert held.status_code == 200
            lines = held.iter_lines()  # kept: a dropped iterator would close the stream
            assert next(lines).startswith("data: ")  # both choices are in the engine now
            assert httpx.get(p.url + "/load").json() == {"server_load": 1}
            r = httpx.post(p.url + "/v1/completions", json={"prompt": "y", "stream": True})
            assert r.status_code == 503 and r.json()["error"]["code"] == 503
        text = httpx.get(p.url + "/metrics").text
        assert (
            metric_value(text, "vllm:admission_rejections_total", reason="max_num_queued_reqs") == 1
        )


# -- 4. metrics -------------------------------------------------------------------------


def test_prompt_tokens_count_whole_prompts_with_cached(tmp_path: Path):
    """v1/metrics/stats.py::IterationStats.update_from_output: prompt_tokens_total counts
    each prompt whole when its prefill ends, cached tokens included; loggers.py observes
    prompt + generation tokens in iteration_tokens_total."""
    prompt = "shared system prompt " * 40
    with sim(tmp_path, "--profile", "instant") as p:
        sizes = []
        for tail in ("a", "b"):
            r = httpx.post(
                p.url + "/v1/completions", json={"prompt": prompt + tail, "max_tokens": 3}
            )
            sizes.append(r.json()["usage"]["prompt_tokens"])
            cached = r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached > 0  # the second prompt was mostly cached, yet counts whole
        text = httpx.get(p.url + "/metrics").text
        assert metric_value(text, "vllm:prompt_tokens_total") == sum(sizes)
        assert metric_value(text, "vllm:iteration_tokens_total_sum") == sum(sizes) + 6
