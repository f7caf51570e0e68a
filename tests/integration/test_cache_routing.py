"""Cache-aware routing end to end: real simulated engines publishing KV events."""

from __future__ import annotations

import httpx
import pytest

from gantry.netutil import free_port
from tests.helpers import gateway, metric_value, sim, wait_until

PREFIX = "You are a careful assistant for the Acme company. " * 60  # ~600 tokens


def chat(system: str, question: str) -> dict:
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 2,
    }


def hits(url: str) -> float:
    return metric_value(httpx.get(url + "/metrics").text, "vllm:prefix_cache_hits_total")


@pytest.mark.parametrize("policy", ["kv_aware", "prefix"])
def test_shared_prefixes_stay_on_the_engine_that_has_them(tmp_path, policy):
    pa, pb = free_port(), free_port()
    with (
        sim(
            tmp_path,
            "--served-model-name",
            "m",
            "--profile",
            "instant",
            "--kv-events",
            f"tcp://*:{pa}",
        ) as a,
        sim(
            tmp_path,
            "--served-model-name",
            "m",
            "--profile",
            "instant",
            "--kv-events",
            f"tcp://*:{pb}",
        ) as b,
    ):
        cfg = tmp_path / "g.yaml"
        cfg.write_text(
            f"engines:\n  - {{url: {a.url}, name: a, kv_events: 'tcp://127.0.0.1:{pa}'}}\n"
            f"  - {{url: {b.url}, name: b, kv_events: 'tcp://127.0.0.1:{pb}'}}\n"
            f"routing: {{policy: {policy}}}\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            for tenant in ("acme", "globex"):
                system = PREFIX.replace("Acme", tenant)
                for i in range(6):
                    r = httpx.post(
                        gw.url + "/v1/chat/completions",
                        json=chat(system, f"question {i}"),
                        timeout=30,
                    )
                    assert r.status_code == 200, r.text
            text = httpx.get(gw.url + "/metrics").text
            routed = {
                e: metric_value(text, "gantry_routing_decisions_total", engine=e, policy=policy)
                for e in ("a", "b")
            }
            assert sum(routed.values()) == 12
            # each tenant's prefix is cached on one engine and its requests hit it there
            total_hits = hits(a.url) + hits(b.url)
            assert total_hits >= 10 * 500, (total_hits, routed)
            if policy == "kv_aware":
                wait_until(
                    lambda: (
                        metric_value(
                            httpx.get(gw.url + "/metrics").text,
                            "gantry_kv_events_total",
                            kind="stored",
                        )
                        > 0
                    )
                )


def test_kv_aware_without_events_falls_back_to_prefix_scoring(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as a,
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as b,
    ):
        cfg = tmp_path / "g.yaml"
        cfg.write_text(
            f"engines:\n  - {{url: {a.url}, name: a}}\n  - {{url: {b.url}, name: b}}\n"
            "routing: {policy: kv_aware}\n"
        )
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            for i in range(6):
                r = httpx.post(
                    gw.url + "/v1/chat/completions", json=chat(PREFIX, f"q{i}"), timeout=30
                )
                assert r.status_code == 200
            assert hits(a.url) + hits(b.url) >= 5 * 500


@pytest.mark.parametrize("policy", ["kv_aware", "prefix", "power_of_two"])
def test_serve_policy_flag_with_engines_on_the_command_line(tmp_path, policy):
    """`gantry serve --engine URL --policy P`: no config file, so no KV-event endpoints;
    kv_aware scores every engine by the approximate index (its fallback)."""
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as a,
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as b,
    ):
        flags = ("--engine", a.url, "--engine", b.url, "--policy", policy)
        with gateway(tmp_path, *flags) as gw:
            for i in range(6):
                r = httpx.post(
                    gw.url + "/v1/chat/completions", json=chat(PREFIX, f"q{i}"), timeout=30
                )
                assert r.status_code == 200, r.text
            text = httpx.get(gw.url + "/metrics").text
            assert metric_value(text, "gantry_routing_decisions_total", policy=policy) == 6
            if policy != "power_of_two":  # the cache-aware ones keep the prefix together
                assert hits(a.url) + hits(b.url) >= 5 * 500


def test_serve_policy_flag_with_kv_events_from_the_config(tmp_path):
    port = free_port()
    with sim(
        tmp_path,
        "--served-model-name",
        "m",
        "--profile",
        "instant",
        "--kv-events",
        f"tcp://*:{port}",
    ) as a:
        cfg = tmp_path / "g.yaml"
        cfg.write_text(
            f"engines:\n  - {{url: {a.url}, name: a, kv_events: 'tcp://127.0.0.1:{port}'}}\n"
        )
        with gateway(tmp_path, "-c", str(cfg), "--policy", "kv_aware") as gw:

            def stored() -> bool:
                r = httpx.post(gw.url + "/v1/chat/completions", json=chat(PREFIX, "q"), timeout=30)
                assert r.status_code == 200, r.text
                text = httpx.get(gw.url + "/metrics").text
                return metric_value(text, "gantry_kv_events_total", kind="stored") > 0

            wait_until(stored, what="the gateway receiving the engine's KV events")
            text = httpx.get(gw.url + "/metrics").text
            assert metric_value(text, "gantry_routing_decisions_total", policy="kv_aware") >= 1
            wait_until(  # the index gauges are refreshed in the background
                lambda: (
                    metric_value(
                        httpx.get(gw.url + "/metrics").text,
                        "gantry_routing_index_blocks",
                        index="kv",
                    )
                    > 0
                ),
                what="the KV index gauge",
            )
