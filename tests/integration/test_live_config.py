"""SIGHUP reloads the configuration file of a running gateway; an invalid file changes
nothing; requests in flight are not dropped."""

from __future__ import annotations

import asyncio
import signal

import httpx

from tests.helpers import gateway, sim, wait_until


def models(url: str) -> set[str]:
    return {c["id"] for c in httpx.get(url + "/v1/models").json()["data"]}


def test_sighup_reload_applies_refuses_and_keeps_streams(tmp_path):
    with (
        sim(tmp_path, "--served-model-name", "m", "--speedup", "5") as a,
        sim(tmp_path, "--served-model-name", "m2", "--profile", "instant") as b,
    ):
        cfg = tmp_path / "g.yaml"
        base = f"engines:\n  - {{url: {a.url}, name: a}}\n"
        cfg.write_text(base)
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            assert models(gw.url) == {"m"}

            async def stream() -> str:
                body = {
                    "model": "m",
                    "prompt": "x",
                    "max_tokens": 200,
                    "ignore_eos": True,
                    "stream": True,
                }
                async with (
                    httpx.AsyncClient(timeout=60) as c,
                    c.stream("POST", gw.url + "/v1/completions", json=body) as r,
                ):
                    return "".join([t async for t in r.aiter_text()])

            async def scenario() -> str:
                task = asyncio.create_task(stream())
                await asyncio.sleep(0)
                cfg.write_text(
                    base + f"  - {{url: {b.url}, name: b}}\naliases:\n  gpt-4: m2\n"
                    "splits:\n  chat:\n    targets: [{model: m, weight: 1}]\n"
                )
                gw.proc.send_signal(signal.SIGHUP)
                await asyncio.to_thread(
                    wait_until, lambda: {"m2", "gpt-4", "chat"} <= models(gw.url)
                )
                return await task

            out = asyncio.run(scenario())
            assert out.endswith("data: [DONE]\n\n") and '"error"' not in out
            r = httpx.post(gw.url + "/v1/completions", json={"model": "gpt-4", "prompt": "x"})
            assert r.status_code == 200 and r.json()["model"] == "gpt-4"
            # an invalid file is refused whole: the running configuration stays
            cfg.write_text(base + "aliases: {gpt-4: m2}\nrouting: {policy: no_such_policy}\n")
            gw.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "config reload refused" in gw.logs())
            assert "gpt-4" in models(gw.url)
            # a change that needs a restart is refused too, naming it
            cfg.write_text(base + "aliases: {gpt-4: m2}\nratelimit: {store: redis}\n")
            gw.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "need a restart" in gw.logs() and "ratelimit" in gw.logs())
            assert "gpt-4" in models(gw.url)
            # engines leave when the file drops them
            cfg.write_text(base)
            gw.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: models(gw.url) == {"m"})
