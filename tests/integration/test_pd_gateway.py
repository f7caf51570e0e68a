"""P/D through the gateway, end to end: the openai SDK, a real gateway, simulated
prefill and decode engines speaking vLLM's ``kv_transfer_params`` contract."""

from __future__ import annotations

import httpx
import openai

from tests.helpers import gateway, metric_value, sim

COMMON = ("--served-model-name", "m", "--speedup", "20")
QUESTION = "Explain, step by step, how a gateway streams tokens to a client. " * 20


def _config(tmp, prefill, decode) -> str:
    cfg = tmp / "pd.yaml"
    lines = ["engines:"]
    lines += [f"  - {{url: {e.url}, name: p{i}, role: prefill}}" for i, e in enumerate(prefill)]
    lines += [f"  - {{url: {e.url}, name: d{i}, role: decode}}" for i, e in enumerate(decode)]
    cfg.write_text("\n".join(lines) + "\nrouting: {policy: prefix}\n")
    return str(cfg)


def _metric(url: str, name: str, **labels: str) -> float:
    return metric_value(httpx.get(url + "/metrics").text, name, **labels)


def test_prefill_then_decode_streamed_and_whole(tmp_path):
    with (
        sim(tmp_path, *COMMON, "--pd-role", "prefill") as p,
        sim(tmp_path, *COMMON, "--pd-role", "decode", "--kv-link", "nvlink") as d,
        gateway(tmp_path, "-c", _config(tmp_path, [p], [d])) as gw,
    ):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none")
        whole = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": QUESTION}], max_tokens=6
        )
        assert whole.usage is not None and whole.usage.completion_tokens == 6
        # a prompt the decode engine never saw: its prefix came over the KV link
        details = whole.usage.prompt_tokens_details
        assert details is not None and (details.cached_tokens or 0) >= 16
        stream = client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": QUESTION + " Briefly."}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text
        # each engine did its half: one-token prefills, all the output on decode
        assert _metric(p.url, "vllm:generation_tokens_total") == 2
        assert _metric(d.url, "vllm:generation_tokens_total") == 11


def test_either_phase_fails_over_before_the_first_byte(tmp_path):
    with (
        sim(tmp_path, *COMMON, "--pd-role", "prefill", "--fault-error", "503=1") as bad_p,
        sim(tmp_path, *COMMON, "--pd-role", "prefill") as p,
        sim(tmp_path, *COMMON, "--pd-role", "decode", "--fault-error", "500=1") as bad_d,
        sim(tmp_path, *COMMON, "--pd-role", "decode") as d,
        gateway(tmp_path, "-c", _config(tmp_path, [bad_p, p], [bad_d, d])) as gw,
    ):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
        for i in range(4):
            r = client.completions.create(model="m", prompt=f"{i} {QUESTION}", max_tokens=4)
            assert r.usage is not None and r.usage.completion_tokens == 4
        stream = client.completions.create(model="m", prompt=QUESTION, max_tokens=4, stream=True)
        assert "".join(c.choices[0].text for c in stream if c.choices)
        # the failing engines were tried, and the gateway moved on before any byte
        assert _metric(bad_p.url, "gantry_sim_faults_total", kind="error_503") >= 1
        assert _metric(bad_d.url, "gantry_sim_faults_total", kind="error_500") >= 1
        assert _metric(d.url, "vllm:generation_tokens_total") == 20


def test_no_prefill_engine_left_is_an_openai_error(tmp_path):
    with (
        sim(tmp_path, *COMMON, "--pd-role", "prefill", "--fault-error", "503=1") as bad_p,
        sim(tmp_path, *COMMON, "--pd-role", "decode") as d,
        gateway(tmp_path, "-c", _config(tmp_path, [bad_p], [d])) as gw,
    ):
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0)
        try:
            client.completions.create(model="m", prompt=QUESTION, max_tokens=4)
        except openai.APIStatusError as exc:
            assert exc.status_code == 503
            assert exc.body is not None
        else:
            raise AssertionError("the request should have failed")
        assert _metric(d.url, "vllm:generation_tokens_total") == 0
