"""Traffic splits (weighted, sticky, by model or engine group) and shadow traffic."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest

from gantry.config import Split, SplitTarget
from gantry.gateway.prepare import pick_arm
from gantry.gateway.shadow import mirrored
from tests.memory_engine import FakeEngine, MemoryGateway, chat

CANARY = Split(
    targets=(SplitTarget(model="v1", weight=95), SplitTarget(model="v2", weight=5)),
    sticky="session",
)


def test_pick_arm_is_sticky_and_follows_the_weights():
    arms = Counter(pick_arm("chat", CANARY, f"user-{i}").model for i in range(20_000))
    assert 0.04 < arms["v2"] / 20_000 < 0.06
    assert {pick_arm("chat", CANARY, "user-7").model for _ in range(10)} == {
        pick_arm("chat", CANARY, "user-7").model
    }


def test_mirrored_share_is_a_hash_of_the_request_id():
    share = sum(mirrored(f"r{i}", 0.1) for i in range(20_000)) / 20_000
    assert 0.09 < share < 0.11 and mirrored("r1", 0.1) == mirrored("r1", 0.1)
    assert not any(mirrored(f"r{i}", 1e-9) for i in range(1000))


def test_split_by_model_is_sticky_per_session_and_measured_per_arm(tmp_path):
    async def main() -> None:
        splits = {
            "chat": {
                "sticky": "session",
                "targets": [{"model": "v1", "weight": 50}, {"model": "v2", "weight": 50}],
            }
        }
        async with MemoryGateway(
            tmp_path, [FakeEngine("a", ("v1",)), FakeEngine("b", ("v2",))], splits=splits
        ) as g:
            seen: dict[str, set[str]] = {}
            for i in range(40):
                sid = f"s{i % 8}"
                code, headers, body = await g.send(
                    "/v1/chat/completions", chat("chat"), headers={"x-session-id": sid}
                )
                assert code == 200
                answer = orjson.loads(body)
                assert answer["model"] == "chat"  # the public name, as with an alias
                seen.setdefault(sid, set()).add(headers["x-gantry-arm"])
                assert answer["engine"] == ("a" if headers["x-gantry-arm"] == "v1" else "b")
            assert all(len(arms) == 1 for arms in seen.values())  # sticky
            assert {a for arms in seen.values() for a in arms} == {"v1", "v2"}
            text = g.gw.metrics.render().decode()
            assert 'gantry_split_requests_total{arm="v1",split="chat",status="200"}' in text
            assert 'gantry_split_requests_total{arm="v2",split="chat",status="200"}' in text
            lines = g.log_lines()
            assert all(line["split"] == "chat" and line["arm"] in ("v1", "v2") for line in lines)
            code, _, body = await g.send("/v1/models", method="GET")
            assert "chat" in [c["id"] for c in orjson.loads(body)["data"]]

    asyncio.run(main())


def test_split_by_engine_group(tmp_path):
    async def main() -> None:
        splits = {
            "m-public": {
                "sticky": "none",
                "targets": [
                    {"model": "m", "group": "canary", "weight": 1},
                    {"model": "m", "group": "stable", "weight": 1e-9},
                ],
            }
        }
        engines = [FakeEngine("stable-1"), FakeEngine("canary-1")]
        async with MemoryGateway(
            tmp_path,
            engines,
            splits=splits,
            engine_groups={"stable-1": "stable", "canary-1": "canary"},
        ) as g:
            for _ in range(10):
                code, headers, body = await g.send("/v1/chat/completions", chat("m-public"))
                assert code == 200 and headers["x-gantry-arm"] == "m@canary"
                assert orjson.loads(body)["engine"] == "canary-1"

    asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_shadow_mirrors_and_discards(tmp_path, stream):
    async def main() -> None:
        live, candidate = FakeEngine("live", ("m",)), FakeEngine("cand", ("m2",))
        async with MemoryGateway(
            tmp_path, [live, candidate], shadow={"m": {"target": "m2", "share": 1.0}}
        ) as g:
            for _ in range(5):
                code, _, body = await g.send("/v1/chat/completions", chat("m", stream=stream))
                assert code == 200 and b"cand" not in body
            await asyncio.gather(*g.gw.shadower._tasks)
            assert candidate.served == 5 and live.served == 5
            text = g.gw.metrics.render().decode()
            assert 'gantry_shadow_requests_total{model="m",status="200",target="m2"} 5.0' in text
            assert len(g.log_lines()) == 5  # mirrors are not client requests

    asyncio.run(main())
