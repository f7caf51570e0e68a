"""Logprobs and token ids: the simulator against vLLM 0.33's contract, over loopback.

Mirrors ``check_logprobs`` (chat_completion/protocol.py, completion/protocol.py),
``_validate_logprobs`` (v1/engine/input_processor.py), ``_create_chat_logprobs`` /
``_get_top_logprobs`` (chat_completion/serving.py) and ``_create_completion_logprobs``
(completion/serving.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Proc, sim

MSG = [{"role": "user", "content": "Name a colour and a fruit."}]


@pytest.fixture(scope="module")
def lp_sim(module_tmp: Path) -> Iterator[Proc]:
    with sim(
        module_tmp, "--profile", "instant", "--served-model-name", "m", "--max-logprobs", "5"
    ) as p:
        yield p


def _client(p: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=p.url + "/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/v1/chat/completions",
            {"top_logprobs": 2},
            "when using `top_logprobs`, `logprobs` must be set to true. (parameter=top_logprobs)",
        ),
        (
            "/v1/chat/completions",
            {"logprobs": True, "top_logprobs": -2},
            "`top_logprobs` must be a positive value or -1. (parameter=top_logprobs, value=-2)",
        ),
        (
            "/v1/completions",
            {"logprobs": -1},
            "`logprobs` must be a positive value. (parameter=logprobs, value=-1)",
        ),
        (
            "/v1/completions",
            {"prompt_logprobs": 1, "stream": True},
            "`prompt_logprobs` are not available when `stream=True`. (parameter=prompt_logprobs)",
        ),
        (
            "/v1/completions",
            {"prompt_logprobs": -3},
            "`prompt_logprobs` must be a positive value or -1. "
            "(parameter=prompt_logprobs, value=-3)",
        ),
        (  # --max-logprobs 5 is the limit, for chat's top_logprobs too
            "/v1/chat/completions",
            {"logprobs": True, "top_logprobs": 6},
            "Requested sample logprobs of 6, which is greater than max allowed: 5 "
            "(parameter=logprobs, value=6)",
        ),
        (
            "/v1/completions",
            {"prompt_logprobs": 7},
            "Requested prompt logprobs of 7, which is greater than max allowed: 5 "
            "(parameter=prompt_logprobs, value=7)",
        ),
    ],
)
def test_logprob_validation_like_vllm(lp_sim: Proc, path: str, body: dict[str, Any], message: str):
    base = {"messages": MSG} if "chat" in path else {"prompt": "Hello"}
    r = httpx.post(lp_sim.url + path, json={**base, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["message"] == message


def _check_position(chosen: float, tops: list[float], k: int) -> None:
    assert chosen <= 0 and all(v <= 0 for v in tops)
    assert len(tops) == k
    assert tops == sorted(tops, reverse=True)
    assert chosen == tops[0] == max(tops)  # temperature 0: the chosen token is the top one


def test_chat_logprobs_and_token_ids(lp_sim: Proc):
    c = _client(lp_sim)
    kw: dict[str, Any] = dict(
        model="m",
        messages=MSG,
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"return_token_ids": True},
    )
    r = c.chat.completions.create(**kw)
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    for item in content:
        _check_position(item.logprob, [t.logprob for t in item.top_logprobs], 3)
        assert item.top_logprobs[0].token == item.token
        assert item.bytes == list(item.token.encode())
    extra = r.model_dump()
    ids = extra["choices"][0]["token_ids"]
    assert r.usage is not None
    assert len(ids) == len(content) == r.usage.completion_tokens
    assert len(extra["prompt_token_ids"]) == r.usage.prompt_tokens
    text = "".join(i.token for i in content)
    assert (choice.message.content or "").startswith(text) or text.startswith(
        choice.message.content or ""
    )
    again = c.chat.completions.create(**kw)  # greedy: the same values every time
    assert again.choices[0].logprobs == choice.logprobs
    # logprobs alone: no top_logprobs, the chosen token still scored
    plain = c.chat.completions.create(model="m", messages=MSG, max_tokens=3, logprobs=True)
    assert plain.choices[0].logprobs is not None
    assert all(i.top_logprobs == [] for i in plain.choices[0].logprobs.content or [])
    off = c.chat.completions.create(model="m", messages=MSG, max_tokens=3)
    assert off.choices[0].logprobs is None and off.model_dump()["prompt_token_ids"] is None


def test_chat_stream_logprobs_per_chunk(lp_sim: Proc):
    c = _client(lp_sim)
    stream = c.chat.completions.create(
        model="m",
        messages=MSG,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"return_token_ids": True, "ignore_eos": True},
    )
    chunks = list(stream)
    first = chunks[0].model_dump()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["choices"][0]["logprobs"] is None and first["prompt_token_ids"]
    n_scored, n_ids = 0, 0
    for ch in chunks[1:]:
        if not ch.choices:
            continue
        d = ch.model_dump()["choices"][0]
        assert d["logprobs"] is not None
        for item in d["logprobs"]["content"]:
            _check_position(item["logprob"], [t["logprob"] for t in item["top_logprobs"]], 2)
        n_scored += len(d["logprobs"]["content"])
        n_ids += len(d["token_ids"])
    assert chunks[-1].usage is not None
    assert n_scored == n_ids == chunks[-1].usage.completion_tokens == 8


def test_completion_logprobs_stream_and_echo(lp_sim: Proc):
    c = _client(lp_sim)
    stream = c.completions.create(
        model="m",
        prompt="The quick brown fox",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        stream=True,
        extra_body={"return_token_ids": True, "ignore_eos": True},
    )
    text, tokens, offsets, prompt_ids_seen = "", [], [], 0
    for ch in stream:
        d = ch.model_dump()["choices"][0]
        lp = d["logprobs"]
        text += d["text"]
        tokens += lp["tokens"]
        offsets += lp["text_offset"]
        prompt_ids_seen += d["prompt_token_ids"] is not None
        for tok, value, top in zip(
            lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True
        ):
            assert value <= 0 and top[tok] == value == max(top.values())
            assert 1 <= len(top) <= 3  # the chosen token plus the top 2 (vLLM: "k + 1")
        assert len(d["token_ids"]) == len(lp["tokens"])
    assert "".join(tokens) == text and prompt_ids_seen == 1
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    # echo scores the prompt too (prompt_logprobs follows logprobs), the first token unscored
    r = httpx.post(
        lp_sim.url + "/v1/completions",
        json={"prompt": "The quick brown fox", "max_tokens": 3, "logprobs": 1, "echo": True},
    ).json()
    ch = r["choices"][0]
    lp = ch["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    assert "".join(lp["tokens"]) == ch["text"]
    prompt_lp = ch["prompt_logprobs"]
    assert prompt_lp[0] is None and len(prompt_lp) == r["usage"]["prompt_tokens"]


def test_completion_prompt_logprobs_shape(lp_sim: Proc):
    r = httpx.post(
        lp_sim.url + "/v1/completions",
        json={"prompt": "one two three four", "max_tokens": 2, "prompt_logprobs": 2},
    ).json()
    ch = r["choices"][0]
    assert ch["logprobs"] is None and ch["token_ids"] is None
    plp = ch["prompt_logprobs"]
    assert plp[0] is None and len(plp) == r["usage"]["prompt_tokens"]
    for pos in plp[1:]:
        entries = list(pos.values())
        assert 2 <= len(entries) <= 3  # the prompt token, then the top 2 by rank
        assert all(set(e) == {"logprob", "rank", "decoded_token"} for e in entries)
        ranked = sorted(entries[1:] if entries[0]["rank"] > 2 else entries, key=lambda e: e["rank"])
        values = [e["logprob"] for e in ranked]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
    assert json.dumps(plp)  # plain JSON: string keys


# -- 3. token ids: the model's vocabulary, BOS and chat template ----------------------


def test_llama_vocab_bos_and_template(tmp_path: Path):
    """vLLM tokenizes text prompts with add_special_tokens=True (BOS for Llama 3),
    renders chat with the model's template, and accepts token ids below the model's
    vocabulary size (``_validate_model_input``: 128,256 for Llama 3.1)."""
    args = ("--profile", "instant", "--model", "llama-3.1-8b", "--gpu", "H100")
    with sim(tmp_path, *args, "--max-model-len", "4096", "--served-model-name", "m") as p:
        ok = httpx.post(
            p.url + "/v1/completions", json={"prompt": [128000, 128255], "max_tokens": 1}
        )
        assert ok.status_code == 200, ok.text
        bad = httpx.post(p.url + "/v1/completions", json={"prompt": [128256], "max_tokens": 1})
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("Token id 128256 is out of vocabulary")
        tok = httpx.post(p.url + "/tokenize", json={"prompt": "Hello"}).json()
        assert tok["tokens"][0] == 128000
        r = httpx.post(p.url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 1}).json()
        assert r["usage"]["prompt_tokens"] == tok["count"]
        chat_tok = httpx.post(p.url + "/tokenize", json={"messages": MSG}).json()["tokens"]
        assert chat_tok[:2] == [128000, 128006] and 128009 in chat_tok
        r = httpx.post(p.url + "/v1/chat/completions", json={"messages": MSG, "max_tokens": 1})
        assert r.json()["usage"]["prompt_tokens"] == len(chat_tok)
