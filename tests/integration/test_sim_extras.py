"""/v1/responses and /inference/v1/generate on a real simulator, with the openai SDK.

Mirrors vLLM 0.33's ``openai/responses/serving.py`` (non-streaming ``response``
objects) and ``serve/disagg`` (``GenerateRequest`` → ``GenerateResponse``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Proc, sim


@pytest.fixture(scope="module")
def instant(module_tmp: Path) -> Iterator[Proc]:
    with sim(module_tmp, "--profile", "instant", "--served-model-name", "m") as p:
        yield p


def test_responses_with_the_openai_sdk(instant: Proc):
    client = openai.OpenAI(base_url=instant.url + "/v1", api_key="x")
    r = client.responses.create(model="m", input="Say hello", max_output_tokens=5)
    assert r.object == "response" and r.model == "m"
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    (msg,) = r.output
    assert msg.type == "message" and msg.role == "assistant"
    assert r.output_text and r.usage is not None
    assert r.usage.output_tokens == 5
    assert r.usage.total_tokens == r.usage.input_tokens + 5
    chat = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hello"}], max_tokens=5
    )
    assert chat.usage is not None and r.usage.input_tokens == chat.usage.prompt_tokens


def test_responses_messages_and_instructions(instant: Proc):
    client = openai.OpenAI(base_url=instant.url + "/v1", api_key="x")
    r = client.responses.create(
        model="m",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "One word?"}]},
        ],
        max_output_tokens=50,
        temperature=0,
    )
    plain = client.responses.create(model="m", input="One word?", max_output_tokens=50)
    assert r.usage is not None and plain.usage is not None
    assert r.usage.input_tokens > plain.usage.input_tokens  # the system message counts
    assert r.instructions == "Be brief."


def test_responses_errors_are_vllms(instant: Proc):
    """Validation runs on the chat path: vLLM's 400 body and wording; unknown model 404."""
    client = openai.OpenAI(base_url=instant.url + "/v1", api_key="x")
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model="m", input="x", temperature=-1)
    assert "temperature must be non-negative" in str(exc.value)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
    r = httpx.post(instant.url + "/v1/responses", json={"model": "m"})
    assert r.status_code == 400 and r.json()["error"]["code"] == 400  # a schema error


def test_generate_tokens_in_tokens_out(instant: Proc):
    body = {
        "token_ids": [9419, 1814, 374],
        "sampling_params": {"max_tokens": 4, "ignore_eos": True, "temperature": 0},
        "request_id": "rid-1",
    }
    r = httpx.post(instant.url + "/inference/v1/generate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"request_id", "choices", "prompt_logprobs", "kv_transfer_params"}
    assert out["request_id"] == "rid-1"
    (choice,) = out["choices"]
    assert choice["finish_reason"] == "length" and len(choice["token_ids"]) == 4
    again = httpx.post(instant.url + "/inference/v1/generate", json=body).json()
    assert again["choices"][0]["token_ids"] == choice["token_ids"]  # temperature 0
    text = httpx.post(
        instant.url + "/detokenize", json={"model": "m", "tokens": choice["token_ids"]}
    ).json()["prompt"]
    assert text.strip()
    bad = httpx.post(
        instant.url + "/inference/v1/generate", json={"token_ids": "x", "sampling_params": {}}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "body.token_ids"
