"""Model-family chat templates, BOS and vocabulary (gantry.sim.chat_format)."""

from __future__ import annotations

import pytest

from gantry.sim.chat_format import FORMATS, family_of, for_model, prompt_ids
from gantry.sim.tokenizer import BuiltinTokenizer

MSGS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
]


@pytest.mark.parametrize(
    ("names", "family"),
    [
        (("llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct"), "llama3"),
        (("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3"), "mistral"),
        (("gemma-2-9b", "google/gemma-2-9b-it"), "gemma"),
        (("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct"), "chatml"),
    ],
)
def test_family_of(names: tuple[str, str], family: str):
    assert family_of(*names) == family


def test_templates_follow_each_family():
    llama = FORMATS["llama3"].render(MSGS)
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert "Today Date" in llama and "Be brief.<|eot_id|>" in llama
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert (
        FORMATS["mistral"].render(MSGS)
        == "<s>[INST] Be brief.\n\nHi [/INST] Hello</s>[INST] Bye [/INST]"
    )
    gemma = FORMATS["gemma"].render(MSGS)
    assert gemma.startswith("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n")
    assert "<start_of_turn>model\nHello<end_of_turn>" in gemma
    assert gemma.endswith("<start_of_turn>model\n")
    assert FORMATS["chatml"].render(MSGS).endswith("<|im_start|>assistant\n")
    assert not FORMATS["llama3"].render(MSGS, add_generation_prompt=False).endswith("\n\n\n")


def test_llama3_specials_are_single_real_ids_and_vocab_is_the_models():
    fmt = FORMATS["llama3"]
    tok = for_model(BuiltinTokenizer(), fmt, 128256)
    assert tok.vocab_size == 128256 and tok.eos_token_id == 128009
    ids = tok.encode(fmt.render([{"role": "user", "content": "Hi"}]))
    assert ids[:2] == [128000, 128006] and ids.count(128009) == 2
    assert tok.decode(ids, skip_special=False) == fmt.render([{"role": "user", "content": "Hi"}])
    assert "<|" not in tok.decode(ids)
    assert prompt_ids(tok, fmt, "Hi")[0] == 128000  # BOS, as add_special_tokens=True
    assert prompt_ids(tok, fmt, "<|begin_of_text|>Hi").count(128000) == 1


@pytest.mark.parametrize("family", ["mistral", "gemma"])
def test_other_families_specials_do_not_collide(family: str):
    inner = BuiltinTokenizer()
    fmt = FORMATS[family]
    tok = for_model(inner, fmt, 32768)
    specials = [tok.encode(s) for s in fmt.specials]
    assert all(len(s) == 1 and s[0] >= inner.vocab_size for s in specials)
    assert tok.vocab_size > max(s[0] for s in specials)
    assert prompt_ids(tok, fmt, "Hi")[0] == tok.encode(fmt.bos or "")[0]


def test_chatml_has_no_bos_and_the_models_vocab():
    tok = for_model(BuiltinTokenizer(), FORMATS["chatml"], 151936)
    assert tok.vocab_size == 151936
    assert prompt_ids(tok, FORMATS["chatml"], "Hi") == BuiltinTokenizer().encode("Hi")
