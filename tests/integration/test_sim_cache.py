"""The simulator's prefix cache seen from outside: /sim/cache_match predicts the cache
hit a request then gets, and /reset_prefix_cache clears the cache (only when idle)."""

from __future__ import annotations

import httpx

from gantry.protocol import block_hashes
from gantry.sim.tokenizer import load_tokenizer, render_chat
from tests.helpers import Proc, sim, wait_until

SYSTEM = "You answer questions about the Acme company's products, politely. " * 30


def chat(question: str, **extra: object) -> dict:
    return {
        "model": "qwen",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": 2,
        **extra,
    }


def match(p: Proc, body: dict) -> dict:
    r = httpx.post(p.url + "/sim/cache_match", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def cached_of(p: Proc, body: dict) -> int:
    r = httpx.post(p.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_cache_match_predicts_the_hit_and_reset_clears_it(fast_sim: Proc):
    assert httpx.post(fast_sim.url + "/reset_prefix_cache").json() == {"success": True}
    cold = match(fast_sim, chat("what is the price of the anvil?"))
    assert cold["cached_tokens"] == 0 and cold["prompt_tokens"] > 500
    assert cold["block_size"] == 16 and cold["prompt_blocks"] == cold["prompt_tokens"] // 16
    assert cached_of(fast_sim, chat("what is the price of the anvil?")) == 0

    # another question with the same system prompt: the prediction is the real hit
    other = chat("and of the rocket skates?")
    predicted = match(fast_sim, other)
    assert 0 < predicted["cached_tokens"] < predicted["prompt_tokens"]
    assert predicted["cached_tokens"] == predicted["cached_blocks"] * 16
    assert cached_of(fast_sim, other) == predicted["cached_tokens"]
    # the same prompt again: everything but the last token (block-aligned), as vLLM
    again = match(fast_sim, other)
    assert again["cached_tokens"] == (again["prompt_tokens"] - 1) // 16 * 16
    assert cached_of(fast_sim, other) == again["cached_tokens"]
    # the same question as block digests of the prompt's token ids (tokenized by the
    # caller, here with the simulator's own tokenizer and chat rendering)
    ids = load_tokenizer(None).encode(render_chat(other["messages"], add_generation_prompt=True))
    hashes = [h.hex() for h in block_hashes(ids, 16, None, [])]
    by_hash = match(fast_sim, {"block_hashes": hashes, "num_tokens": len(ids)})
    assert by_hash["cached_tokens"] == again["cached_tokens"]
    assert by_hash["prompt_tokens"] == again["prompt_tokens"]
    # a salted request shares nothing with unsalted ones
    assert match(fast_sim, chat("and of the rocket skates?", cache_salt="t1"))["cached_tokens"] == 0
    # completions bodies are matched too, and the load comes with the answer
    text = match(fast_sim, {"model": "qwen", "prompt": "unrelated words " * 40})
    assert text["cached_tokens"] == 0 and text["running"] == 0 and text["waiting"] == 0

    assert httpx.post(fast_sim.url + "/reset_prefix_cache").json() == {"success": True}
    assert match(fast_sim, other)["cached_tokens"] == 0
    assert cached_of(fast_sim, other) == 0


def test_reset_is_refused_while_a_request_holds_blocks(fast_sim: Proc):
    body = {"model": "qwen", "prompt": "a long answer please", "max_tokens": 5000}
    body.update(stream=True, ignore_eos=True)
    with httpx.stream("POST", fast_sim.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()  # kept referenced: a dropped iterator closes the stream
        assert next(line for line in lines if line.startswith("data: {"))
        # the request is running: it holds KV blocks
        assert httpx.get(fast_sim.url + "/sim/stats").json()["running"] == 1
        refused = httpx.post(fast_sim.url + "/reset_prefix_cache")
        assert refused.status_code == 200 and refused.json() == {"success": False}
    # the client went away: the engine aborts the request and frees its blocks
    wait_until(
        lambda: httpx.post(fast_sim.url + "/reset_prefix_cache").json() == {"success": True},
        what="the aborted request freeing its blocks",
    )
    assert httpx.get(fast_sim.url + "/sim/stats").json()["running"] == 0


def test_bad_bodies_and_no_admin(fast_sim: Proc, tmp_path):
    r = httpx.post(fast_sim.url + "/sim/cache_match", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]
    r = httpx.post(fast_sim.url + "/sim/cache_match", content=b"[1]", headers=_JSON)
    assert r.status_code == 400
    for bad in ({"block_hashes": ["zz"], "num_tokens": 3}, {"block_hashes": [], "num_tokens": -1}):
        r = httpx.post(fast_sim.url + "/sim/cache_match", json=bad)
        assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequestError"
    with sim(tmp_path, "--profile", "instant") as plain:
        assert httpx.post(plain.url + "/sim/cache_match", json={"prompt": "x"}).status_code == 404
        assert httpx.post(plain.url + "/reset_prefix_cache").status_code == 404


_JSON = {"content-type": "application/json"}
