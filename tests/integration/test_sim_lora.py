"""The simulator's LoRA adapters against vLLM 0.33's contract, over real HTTP.

Mirrors vllm/entrypoints/openai/serving_models.py (load, unload, model cards) and
v1/metrics/loggers.py (vllm:lora_requests_info).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import Proc, sim

RUNTIME = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}


@pytest.fixture(scope="module")
def lora_sim(module_tmp: Path) -> Iterator[Proc]:
    with sim(
        module_tmp,
        "--profile",
        "instant",
        "--served-model-name",
        "qwen",
        "--enable-lora",
        "--max-loras",
        "2",
        "--lora-modules",
        "sql=org/sql-lora",
        env=RUNTIME,
    ) as p:
        yield p


def _cards(url: str) -> dict[str, dict[str, object]]:
    return {c["id"]: c for c in httpx.get(url + "/v1/models").json()["data"]}


def test_static_adapter_is_a_model_card_with_its_parent(lora_sim: Proc):
    cards = _cards(lora_sim.url)
    assert cards["qwen"]["parent"] is None and cards["qwen"]["max_model_len"]
    assert cards["sql"]["parent"] == "qwen" and cards["sql"]["root"] == "org/sql-lora"
    assert cards["sql"]["max_model_len"] is None


def test_adapter_answers_under_its_own_name_through_the_sdk(lora_sim: Proc):
    client = openai.OpenAI(base_url=lora_sim.url + "/v1", api_key="x")
    r = client.chat.completions.create(
        model="sql", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert r.model == "sql" and r.usage is not None and r.usage.completion_tokens == 3
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="nope", prompt="hi", max_tokens=1)


def test_load_and_unload_at_run_time_with_vllms_answers(lora_sim: Proc):
    url = lora_sim.url
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "fr", "lora_path": "o/fr"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'fr' added successfully."
    assert _cards(url)["fr"]["parent"] == "qwen"
    again = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "fr", "lora_path": "x"})
    err = again.json()["error"]
    assert again.status_code == 400 and err["type"] == "InvalidUserInput"
    assert "has already been loaded" in err["message"]
    missing = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "fr"})
    assert "Both 'lora_name' and 'lora_path'" in missing.json()["error"]["message"]
    r = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "fr"})
    assert r.status_code == 200 and "removed successfully" in r.text
    assert "fr" not in _cards(url)
    gone = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "fr"})
    assert gone.status_code == 404
    assert gone.json()["error"] == {
        "message": "The lora adapter 'fr' cannot be found.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


def test_lora_requests_info_metric(lora_sim: Proc):
    httpx.post(
        lora_sim.url + "/v1/completions",
        json={"model": "sql", "prompt": "hello", "max_tokens": 2},
    ).raise_for_status()
    text = httpx.get(lora_sim.url + "/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("vllm:lora_requests_info{")]
    assert len(lines) == 1, lines
    assert 'max_lora="2"' in lines[0]
    assert 'running_lora_adapters=""' in lines[0] and 'waiting_lora_adapters=""' in lines[0]
    assert float(lines[0].rsplit(" ", 1)[1]) > 1.6e9  # a timestamp, as vLLM's


def test_runtime_endpoints_need_vllms_variable(module_tmp: Path):
    with sim(module_tmp, "--profile", "instant", "--enable-lora") as p:
        r = httpx.post(p.url + "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "b"})
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
        text = httpx.get(p.url + "/metrics").text
        assert 'vllm:lora_requests_info{max_lora="1"' in text
