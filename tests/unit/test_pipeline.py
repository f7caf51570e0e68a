"""The request pipeline over in-memory engines: dispatch, retries, fallback, relay,
prepare, accounting and the error mapper, with no process and no socket."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.memory_engine import FakeEngine, MemoryGateway, chat


def run(coro):  # each test builds its own loop: the gateway's tasks live in it
    return asyncio.run(coro)


# engine scripts -> expected status, serving engine (or None), and retries counted
RETRY_TABLE = [
    ("ok", ["ok"], ["ok"], False, 200, "a", 0),
    ("503 then other", ["503"], ["ok"], False, 200, "b", 1),
    ("refused then other", ["refuse"], ["ok"], False, 200, "b", 1),
    ("429 then other", ["429"], ["ok"], False, 200, "b", 1),
    ("400 is not retried", ["400"], ["ok"], False, 400, None, 0),
    ("cut mid-answer", ["cut"], ["ok"], False, 200, "b", 1),
    ("all fail", ["503"], ["503"], False, 503, None, 1),
    ("stream ok", ["ok"], ["ok"], True, 200, "a", 0),
    ("stream dies before first token", ["fail_before_token"], ["ok"], True, 200, "b", 1),
    ("stream 503 then other", ["503"], ["ok"], True, 200, "b", 1),
]


@pytest.mark.parametrize(
    ("name", "a", "b", "stream", "status", "served_by", "retries"),
    RETRY_TABLE,
    ids=[r[0] for r in RETRY_TABLE],
)
def test_retry_before_the_first_byte(tmp_path, name, a, b, stream, status, served_by, retries):
    async def main() -> None:
        ea, eb = FakeEngine("a"), FakeEngine("b")
        ea.script, eb.script = list(a), list(b)
        # round_robin starts at "a": the first attempt always goes there
        async with MemoryGateway(
            tmp_path, [ea, eb], routing={"policy": "round_robin"}, retry={"backoff_base_s": 0}
        ) as g:
            code, _, body = await g.send("/v1/chat/completions", chat(stream=stream))
            assert code == status, body
            if served_by is not None:
                assert f"from-{served_by}".encode() in body or f'"{served_by}"'.encode() in body
            if stream and code == 200:
                assert body.count(b"data: [DONE]") == 1 and body.count(b'"role"') == 1
            assert _retries(g) == retries
            (line,) = g.log_lines()
            assert line["status"] == status

    run(main())


def _retries(g: MemoryGateway) -> float:
    return sum(
        s.value
        for fam in g.metrics.registry.collect()
        for s in fam.samples
        if s.name == "gantry_upstream_retries_total"
    )


def test_stream_cut_after_first_token_ends_with_an_error_event_and_is_recorded(tmp_path):
    async def main() -> None:
        e = FakeEngine("a")
        e.script = ["fail_after_token"]
        async with MemoryGateway(tmp_path, [e]) as g:
            code, _, body = await g.send("/v1/chat/completions", chat(stream=True))
            assert code == 200  # the response had started
            events = [x for x in body.split(b"\n\n") if x]
            assert b"from-a" in events[1]
            err = orjson.loads(events[-2][6:])
            assert err["error"]["code"] == 502 and events[-1] == b"data: [DONE]"
            (line,) = g.log_lines()
            assert line["status"] == 502 and line["error"]  # not recorded as 200
            assert g.requests_total(status="502") == 1 and g.requests_total(status="200") == 0

    run(main())


def test_fallback_chain_when_a_model_has_no_healthy_engine(tmp_path):
    async def main() -> None:
        big, small = FakeEngine("big", ("big",)), FakeEngine("small", ("small",))
        async with MemoryGateway(tmp_path, [big, small], fallbacks={"big": ["small"]}) as g:
            big.healthy = False
            for _ in range(2):
                await g.gw.pool.refresh()
            code, _, body = await g.send("/v1/chat/completions", chat("big"))
            assert code == 200 and orjson.loads(body)["engine"] == "small"

    run(main())


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_alias_is_what_the_client_sees(tmp_path, stream, pretty):
    async def main() -> None:
        async with MemoryGateway(
            tmp_path, [FakeEngine("a", ("served",), pretty=pretty)], aliases={"gpt-4": "served"}
        ) as g:
            code, _, body = await g.send("/v1/chat/completions", chat("gpt-4", stream=stream))
            assert code == 200
            assert b'"served"' not in body and b"gpt-4" in body

    run(main())


@pytest.mark.parametrize("include_usage", [False, True])
def test_pretty_printing_engine_is_accounted_and_usage_hidden_unless_asked(tmp_path, include_usage):
    async def main() -> None:
        async with MemoryGateway(tmp_path, [FakeEngine("a", pretty=True)]) as g:
            body = chat(stream=True, stream_options={"include_usage": include_usage})
            code, _, out = await g.send("/v1/chat/completions", body)
            assert code == 200 and out.endswith(b"data: [DONE]\n\n")
            assert (b'"usage"' in out) is include_usage
            (line,) = g.log_lines()
            assert (line["prompt_tokens"], line["completion_tokens"]) == (5, 2)

    run(main())


def test_engine_url_never_in_a_public_answer(tmp_path):
    async def main() -> None:
        e = FakeEngine("gpu-1")
        e.default = "refuse"
        async with MemoryGateway(tmp_path, [e], retry={"attempts": 0}) as g:
            code, _, body = await g.send("/v1/chat/completions", chat())
            assert code == 502 and b"gpu-1" in body and b"http://" not in body
            code, _, body = await g.send("/readyz", method="GET")
            assert b"http://" not in body

    run(main())


def test_kv_pressure_is_refused_at_once_naming_the_reason(tmp_path):
    async def main() -> None:
        async with MemoryGateway(
            tmp_path, [FakeEngine("a", kv_usage=0.99)], admission={"queue_timeout_s": 30}
        ) as g:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            code, headers, body = await g.send("/v1/chat/completions", chat())
            assert code == 503 and loop.time() - t0 < 5  # not after the queue timeout
            msg = orjson.loads(body)["error"]["message"]
            assert "KV cache" in msg and "Timed out" not in msg
            assert headers["retry-after"] == "2"

    run(main())


def test_queue_deadline_is_absolute_despite_pool_refreshes(tmp_path):
    """max_inflight_per_engine 1: the second request waits for the first; refreshes
    of the pool wake it, but its deadline (queue_timeout_s) does not start over."""

    async def main() -> None:
        e = FakeEngine("a")
        e.gate = asyncio.Event()
        async with MemoryGateway(
            tmp_path,
            [e],
            admission={"max_inflight_per_engine": 1, "queue_timeout_s": 0.5},
        ) as g:
            loop = asyncio.get_running_loop()
            first = asyncio.create_task(g.send("/v1/chat/completions", chat()))
            await asyncio.wait_for(e.entered.wait(), 30)

            async def refresher() -> None:
                while True:
                    await g.gw.pool.refresh()  # wakes every waiter
                    await asyncio.sleep(0.02)

            r = asyncio.create_task(refresher())
            t0 = loop.time()
            code, _, body = await g.send("/v1/chat/completions", chat())
            waited = loop.time() - t0
            r.cancel()
            e.gate.set()
            assert (await first)[0] == 200
            assert code == 503 and 0.5 <= waited < 5
            msg = orjson.loads(body)["error"]["message"]
            assert "waited 0.5s" in msg or "waited 0.6s" in msg or "waited" in msg

    run(main())


def test_idempotency_never_stores_a_failure(tmp_path):
    async def main() -> None:
        e = FakeEngine("a")
        async with MemoryGateway(tmp_path, [e], retry={"attempts": 0}) as g:
            key = {"idempotency-key": "k1"}
            e.script = ["429"]
            code, _, _ = await g.send("/v1/chat/completions", chat(), headers=key)
            assert code == 429
            code, headers, _ = await g.send("/v1/chat/completions", chat(), headers=key)
            assert code == 200 and "idempotent-replayed" not in headers  # ran again
            skey = {"idempotency-key": "k2"}
            e.script = ["fail_after_token"]
            code, _, body = await g.send("/v1/chat/completions", chat(stream=True), headers=skey)
            assert b'"error"' in body
            code, headers, body = await g.send(
                "/v1/chat/completions", chat(stream=True), headers=skey
            )
            assert "idempotent-replayed" not in headers and b'"error"' not in body
            code, headers, again = await g.send(
                "/v1/chat/completions", chat(stream=True), headers=skey
            )
            assert headers.get("idempotent-replayed") == "true" and again == body
            assert e.served == 3  # the 429 did not run; the replay did not reach it

    run(main())


REFUSALS = [
    ("unknown path", "POST", "/v2/nothing", b"{}", {}, 404),
    ("wrong method", "GET", "/v1/chat/completions", b"", {}, 405),
    ("not json", "POST", "/v1/chat/completions", b"{", {}, 400),
    ("wrong type", "POST", "/v1/chat/completions", b"{}", {"content-type": "text/plain"}, 415),
    ("no messages", "POST", "/v1/chat/completions", b'{"model": "m"}', {}, 400),
    ("unknown model", "POST", "/v1/chat/completions", orjson.dumps(chat("zz")), {}, 404),
    (
        "bad timeout",
        "POST",
        "/v1/chat/completions",
        orjson.dumps(chat()),
        {"x-request-timeout": "-1"},
        400,
    ),
    ("admin needs auth", "GET", "/admin/keys", b"", {}, 403),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "raw", "headers", "status"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_every_refusal_is_counted_and_logged_once(
    tmp_path, name, method, path, raw, headers, status
):
    async def main() -> None:
        async with MemoryGateway(tmp_path, [FakeEngine("a")]) as g:
            code, _, body = await g.send(path, method=method, raw=raw, headers=headers)
            assert code == status
            assert set(orjson.loads(body)["error"]) == {"message", "type", "param", "code"}
            lines = g.log_lines()
            assert len(lines) == 1 and lines[0]["status"] == status
            assert g.requests_total(status=str(status)) == 1
            assert g.requests_total() == 1

    run(main())


def test_draining_refuses_new_work_with_connection_close(tmp_path):
    async def main() -> None:
        async with MemoryGateway(tmp_path, [FakeEngine("a")]) as g:
            g.gw.start_drain()
            code, headers, _ = await g.send("/v1/chat/completions", chat())
            assert code == 503 and headers["connection"] == "close" and "retry-after" in headers
            code, _, body = await g.send("/readyz", method="GET")
            assert code == 503 and b"draining" in body
            assert g.requests_total(status="503") == 2

    run(main())


def test_models_follow_the_key_allow_list(tmp_path):
    async def main() -> None:
        async with MemoryGateway(
            tmp_path,
            [FakeEngine("a", ("m", "n"))],
            security={"auth": "required"},
            aliases={"alias-n": "n"},
        ) as g:
            keys = g.gw.security.keys
            assert keys is not None
            secret, _ = await keys.create(tenant="t", models=("m",))
            everything, _ = await keys.create(tenant="t")
            await g.gw.auth.refresh()
            code, _, body = await g.send(
                "/v1/models", method="GET", headers={"authorization": f"Bearer {secret}"}
            )
            assert code == 200 and [c["id"] for c in orjson.loads(body)["data"]] == ["m"]
            code, _, body = await g.send(
                "/v1/models", method="GET", headers={"authorization": f"Bearer {everything}"}
            )
            assert [c["id"] for c in orjson.loads(body)["data"]] == ["m", "n", "alias-n"]

    run(main())


def test_client_disconnect_cancels_the_engine_request(tmp_path):
    async def main() -> None:
        e = FakeEngine("a")
        e.gate = asyncio.Event()
        async with MemoryGateway(tmp_path, [e]) as g:
            from gantry.gateway.http import MemoryConnection
            from gantry.gateway.pipeline import SECURITY_HEADERS

            conn = MemoryConnection(SECURITY_HEADERS)
            x = conn.exchange(
                "POST",
                "/v1/chat/completions",
                {b"content-type": "application/json"},
                orjson.dumps(chat(stream=True)),
            )
            task = asyncio.create_task(g.gw.handle(x))
            await asyncio.wait_for(e.entered.wait(), 30)
            x._lost()  # the client went away
            await task
            assert g.gw.pool.inflight["a"] == 0
            (line,) = g.log_lines()
            assert line["status"] == 499

    run(main())
