"""LoRA adapters end to end: the openai SDK through a gateway to simulated engines."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai

from tests.helpers import bearer, free_port, gateway, metric_value, new_key, sim, wait_key_active

RUNTIME = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
LORA = ("--profile", "instant", "--served-model-name", "qwen", "--enable-lora", "--max-loras", "2")


def _engine_models(url: str) -> set[str]:
    return {c["id"] for c in httpx.get(url + "/v1/models").json()["data"]}


def _served(url: str) -> float:
    return metric_value(httpx.get(url + "/metrics").text, "vllm:request_success_total")


def test_adapters_route_load_on_demand_and_relay_admin(tmp_path: Path):
    with (
        sim(tmp_path, *LORA, "--lora-modules", "sql=org/sql-lora", env=RUNTIME) as a,
        sim(tmp_path, *LORA, env=RUNTIME) as b,
    ):
        cfg = tmp_path / "g.yaml"
        cfg.write_text(
            f"engines:\n  - {{url: {a.url}, name: a}}\n  - {{url: {b.url}, name: b}}\n"
            "adapters:\n  on_demand: true\n  models:\n    qwen: {fr: org/fr-lora}\n"
        )
        port = free_port()
        db = f"sqlite:///{tmp_path}/gantry-{port}.db"
        with gateway(tmp_path, "-c", str(cfg), port=port, secure=True) as gw:
            admin, _ = new_key(db, "--tenant", "ops", "--role", "admin")
            user, _ = new_key(db, "--tenant", "t")
            wait_key_active(gw.url, user)
            ops = httpx.Client(base_url=gw.url, headers=bearer(admin))
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=user)
            assert {"qwen", "sql"} <= {m.id for m in client.models.list()}

            # An adapter's requests go only to the engine that has it loaded.
            for _ in range(3):
                r = client.completions.create(model="sql", prompt="select", max_tokens=2)
                assert r.model == "sql"
            assert (_served(a.url), _served(b.url)) == (3, 0)

            # A registered adapter nobody has: loaded on demand on one engine, then served.
            r = client.completions.create(model="fr", prompt="bonjour", max_tokens=2)
            assert r.model == "fr"
            assert ["fr" in _engine_models(e.url) for e in (a, b)].count(True) == 1

            # The admin API relays load and unload, and the gateway follows at once.
            load = {"adapter": "de", "path": "org/de-lora", "engines": ["a", "b"]}
            r2 = ops.post("/admin/adapters/load", json=load)
            assert r2.status_code == 200, r2.text
            assert r2.json()["loaded"] == ["a", "b"]
            assert all("de" in _engine_models(e.url) for e in (a, b))
            assert client.completions.create(model="de", prompt="x", max_tokens=1).model == "de"
            r2 = ops.post("/admin/adapters/unload", json={"adapter": "de"})
            assert r2.status_code == 200 and sorted(r2.json()["unloaded"]) == ["a", "b"]
            assert not any("de" in _engine_models(e.url) for e in (a, b))
            try:
                client.completions.create(model="de", prompt="x", max_tokens=1)
                raise AssertionError("an unloaded adapter was served")
            except openai.NotFoundError:
                pass

            # An engine's refusal comes back with its status and vLLM's message.
            r2 = ops.post("/admin/adapters/unload", json={"adapter": "zz", "engines": ["b"]})
            assert r2.status_code == 404
            assert r2.json()["error"]["message"] == "The lora adapter 'zz' cannot be found."
            bad = ops.post("/admin/adapters/load", json={"adapter": "zz"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "path"
            state = ops.get("/admin/adapters").json()
            assert state["registry"] == {"qwen": {"fr": "org/fr-lora"}}
            assert "sql" in state["engines"]["a"]
            audit = ops.get("/admin/audit").json()["data"]
            assert {"adapter.load", "adapter.unload"} <= {e["action"] for e in audit}
            assert httpx.get(gw.url + "/admin/adapters", headers=bearer(user)).status_code == 403
