"""P/D's pure parts: vLLM's --kv-transfer-config, link presets, transfer time, held KV."""

from __future__ import annotations

import pytest

from gantry.sim.pd import (
    LINKS,
    HeldKV,
    PDConfigError,
    kv_transfer_config,
    remote_prefill,
    transfer_seconds,
)
from gantry.sim.profiles import model_profile


def test_vllm_json_flag_and_the_simple_role():
    cfg = kv_transfer_config('{"kv_connector":"NixlConnector","kv_role":"kv_producer"}')
    assert cfg is not None and cfg.produces and not cfg.consumes
    assert cfg.timeout_s == 480.0  # VLLM_NIXL_ABORT_REQUEST_TIMEOUT's default
    d = kv_transfer_config(None, pd_role="decode", link="nvlink")
    assert d is not None and d.consumes and not d.produces and d.link == LINKS["nvlink"]
    assert kv_transfer_config(None) is None
    env = {"VLLM_NIXL_ABORT_REQUEST_TIMEOUT": "30"}
    assert kv_transfer_config(None, pd_role="both", env=env).timeout_s == 30.0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text, kw",
    [
        ("not json", {}),
        ('{"kv_role": "kv_sideways"}', {}),
        (None, {"pd_role": "middle"}),
        (None, {"pd_role": "decode", "link": "pigeon"}),
        ('{"kv_load_failure_policy": "shrug"}', {}),
    ],
)
def test_bad_settings_are_refused(text, kw):
    with pytest.raises(PDConfigError):
        kv_transfer_config(text, **kw)


def test_transfer_time_is_kv_bytes_over_the_link():
    llama = model_profile("llama-3.1-8b")
    per_token = llama.kv_bytes_per_token(2.0)  # 2 x 32 layers x 8 heads x 128 x 2 B
    assert per_token == 131072
    t = transfer_seconds(8192, per_token, 1, LINKS["rdma"])
    assert t == pytest.approx(LINKS["rdma"].latency_s + 8192 * 131072 / 50e9)
    assert transfer_seconds(8192, per_token, 1, LINKS["tcp"]) > 10 * t  # TCP is slow
    assert transfer_seconds(8192, per_token, 2, LINKS["rdma"]) < t  # TP ranks in parallel
    assert transfer_seconds(0, per_token, 1, LINKS["tcp"]) == 0.0


def test_held_blocks_are_taken_once_and_expire():
    held = HeldKV(timeout_s=10, max_entries=2)
    assert held.hold("a", [1, 2], 32, now=0) == []
    assert held.take("a", (1, 3), now=1) is None  # wrong blocks
    got = held.take("a", (1, 2), now=1)
    assert got is not None and got.tokens == 32
    assert held.take("a", (1, 2), now=1) is None  # read once
    held.hold("b", [4], 16, now=0)
    assert [h.blocks for h in held.expire(now=10)] == [[4]]
    held.hold("c", [5], 16, now=20)
    held.hold("d", [6], 16, now=20)
    assert [h.blocks for h in held.hold("e", [7], 16, now=20)] == [[5]]  # bounded
    assert len(held) == 2


def test_decode_params_are_read_leniently():
    assert remote_prefill(None) is None
    assert remote_prefill({"do_remote_decode": True}) is None
    r = remote_prefill(
        {
            "do_remote_prefill": True,
            "remote_block_ids": [3, 4],
            "remote_host": "h",
            "remote_port": 9,
            "remote_engine_id": "e",
            "remote_request_id": "q",
        }
    )
    assert r is not None and r.block_ids == (3, 4) and r.port == 9
    assert remote_prefill({"do_remote_prefill": True, "remote_block_ids": ["x"]}) is None


def test_pd_benchmark_quick_mode_prints_both_arms(capsys, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import pd as bench  # benchmarks/pd.py

    sys.modules.pop("pd", None)
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "| 2048/128 | 4 | 4 aggregated |" in out and "| 2048/128 | 4 | 2P+2D (rdma) |" in out
