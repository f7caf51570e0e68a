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
    with sim(module_tmp, "--profile", "instant", "--served-model-name", "m", "--tokens-only") as p:
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


def test_generate_is_403_without_tokens_only(tmp_path: Path):
    """vLLM 0.33 serves /inference/v1/generate (serve/disagg) only with --tokens-only or
    --enable-scale-out; without, the route answers 403 PermissionDeniedError."""
    with sim(tmp_path, "--profile", "instant", "--served-model-name", "m") as p:
        body = {"token_ids": [1, 2], "sampling_params": {"max_tokens": 1}}
        r = httpx.post(p.url + "/inference/v1/generate", json=body)
        assert r.status_code == 403
        err = r.json()["error"]
        assert err["type"] == "PermissionDeniedError" and "--tokens-only" in err["message"]


def test_responses_streamed_with_the_openai_sdk(instant: Proc):
    """vLLM openai/responses/serving.py responses_stream_generator: typed events with a
    sequence_number from 0, the text as output_text deltas, the whole response (usage
    included) in the last event, and no [DONE]."""
    client = openai.OpenAI(base_url=instant.url + "/v1", api_key="x")
    events = list(
        client.responses.create(model="m", input="Say hello", max_output_tokens=6, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) >= 1 and kinds[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(
        deltas
    )
    assert kinds[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",  # cut by max_output_tokens
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.status == "incomplete" and final.usage is not None
    assert final.usage.output_tokens == 6
    assert final.output_text == "".join(deltas) == events[-4].text
    assert final.id == events[0].response.id
    raw = httpx.post(
        instant.url + "/v1/responses",
        json={"model": "m", "input": "Hi", "max_output_tokens": 2, "stream": True},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in raw.content and raw.text.startswith("event: response.created\n")
    with pytest.raises(openai.NotFoundError):  # errors stay errors, not a stream
        list(client.responses.create(model="nope", input="x", stream=True))
