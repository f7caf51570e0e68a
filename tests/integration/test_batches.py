"""Batch jobs end to end: the ``openai`` SDK's files and batches against a real gateway
subprocess and simulated engines, a restart in the middle of a job, two replicas on
one PostgreSQL, bad input, and the ``gantry batches`` CLI."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import (
    bearer,
    fresh_postgres,
    gantry_cmd,
    gateway,
    metric_value,
    new_key,
    sim,
    wait_http,
    wait_until,
)


def jsonl(n: int, model: str = "m", max_tokens: int = 8) -> bytes:
    lines = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"question {i}"}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]
    return b"\n".join(json.dumps(x).encode() for x in lines) + b"\n"


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def engine_requests(engine_url: str) -> float:
    text = httpx.get(engine_url + "/metrics").text
    return metric_value(text, "vllm:request_success_total")


def run_to_end(c: openai.OpenAI, batch_id: str, timeout: float = 90.0) -> Any:
    return wait_until(
        lambda: (
            (b := c.batches.retrieve(batch_id)).status
            in ("completed", "failed", "expired", "cancelled")
            and b
        ),
        timeout,
        "the batch to finish",
    )


def lines_of(c: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines() if x.strip()]


def batch_env(tmp: Path, db: str, **extra: str) -> dict[str, str]:
    return {
        "GANTRY_SECURITY__DATABASE_URL": db,
        "GANTRY_BATCHES__STORAGE_DIR": str(tmp / "files"),
        "GANTRY_BATCHES__POLL_INTERVAL_S": "0.2",
        **extra,
    }


@pytest.fixture(scope="module")
def setup(module_tmp: Path):
    db = f"sqlite:///{module_tmp}/b.db"
    acme, _ = new_key(db, "--tenant", "acme")
    other, _ = new_key(db, "--tenant", "other")
    admin, _ = new_key(db, "--tenant", "ops", "--role", "admin")
    with (
        sim(module_tmp, "--served-model-name", "m", "--profile", "instant", "--enable-admin") as e,
        gateway(
            module_tmp,
            "--engine",
            e.url,
            secure=True,
            env=batch_env(
                module_tmp,
                db,
                GANTRY_BATCHES__MAX_FILE_BYTES="200000",
                # a line the engine never answers (test_cancel) fails after this
                GANTRY_TIMEOUTS__TOTAL_S="5",
                GANTRY_TIMEOUTS__ATTEMPT_S="5",
            ),
            health="/health",
        ) as gw,
    ):
        wait_http(gw.url, 30, path="/readyz", headers=bearer(admin))
        yield gw, e, {"acme": acme, "other": other, "admin": admin, "db": db}


def test_openai_sdk_runs_a_batch(setup):
    gw, engine, k = setup
    c = client(gw.url, k["acme"])
    before = engine_requests(engine.url)
    bad = b'{"custom_id": "broken", "method": "POST"\nnot json at all\n'
    f = c.files.create(file=("in.jsonl", jsonl(5) + bad), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    assert c.files.retrieve(f.id).filename == "in.jsonl"
    assert f.id in [x.id for x in c.files.list()]
    b = c.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"job": "test"},
    )
    assert b.status == "validating" and b.metadata == {"job": "test"}
    done = run_to_end(c, b.id)
    assert done.status == "completed"
    assert done.request_counts.total == 7
    assert done.request_counts.completed == 5 and done.request_counts.failed == 2
    out = lines_of(c, done.output_file_id)
    assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(5)]
    for x in out:
        assert x["id"].startswith("batch_req_") and x["error"] is None
        assert x["response"]["status_code"] == 200 and x["response"]["request_id"]
        assert x["response"]["body"]["choices"][0]["message"]["content"]
    errs = lines_of(c, done.error_file_id)
    assert len(errs) == 2 and all(x["response"] is None for x in errs)
    assert {x["error"]["code"] for x in errs} == {"invalid_request"}
    assert engine_requests(engine.url) - before == 5  # malformed lines never ran
    assert b.id in [x.id for x in c.batches.list()]


def test_other_tenants_files_and_batches_are_404(setup):
    gw, _, k = setup
    mine, theirs = client(gw.url, k["acme"]), client(gw.url, k["other"])
    f = mine.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
    b = mine.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        lambda: theirs.files.retrieve(f.id),
        lambda: theirs.files.content(f.id),
        lambda: theirs.files.delete(f.id),
        lambda: theirs.batches.retrieve(b.id),
        lambda: theirs.batches.cancel(b.id),
        lambda: theirs.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert f.id not in [x.id for x in theirs.files.list()]
    assert b.id not in [x.id for x in theirs.batches.list()]
    run_to_end(mine, b.id)


def test_bad_uploads_and_batches_are_400(setup):
    gw, _, k = setup
    c = client(gw.url, k["acme"])
    with pytest.raises(openai.BadRequestError, match="purpose"):
        c.files.create(file=("in.jsonl", jsonl(1)), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="limit is 200000"):
        c.files.create(file=("big.jsonl", b"x" * 200_001), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("empty.jsonl", b"\n\n"), purpose="batch")
    f = c.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        c.batches.create(input_file_id=f.id, endpoint="/v1/moderations", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        c.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="forever",  # type: ignore[arg-type]
        )
    with pytest.raises(openai.NotFoundError):
        c.batches.create(
            input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h"
        )
    r = httpx.post(gw.url + "/v1/files", content=b"x" * 300_000, headers=bearer(k["acme"]))
    assert r.status_code == 413  # beyond the upload limit of the HTTP front itself
    assert c.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(f.id)


def test_cancel(setup):
    """A batch whose lines are in flight (the engine holds them: a hang fault) is
    cancelled: it is ``cancelling`` until those lines end, then ``cancelled``, and a
    second cancel is refused."""
    gw, engine, k = setup
    c = client(gw.url, k["acme"])

    def hung() -> float:
        return metric_value(
            httpx.get(engine.url + "/metrics").text, "gantry_sim_faults_total", kind="hang"
        )

    before = hung()
    httpx.post(engine.url + "/sim/faults", json={"reset": True, "hang_rate": 1.0})
    try:
        f = c.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
        b = c.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        wait_until(
            lambda: hung() > before,
            30,
            "a line of the batch held by the engine",
        )
        assert c.batches.cancel(b.id).status == "cancelling"
    finally:
        httpx.post(engine.url + "/sim/faults", json={"reset": True})
    done = run_to_end(c, b.id)
    assert done.status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="cancelled"):
        c.batches.cancel(b.id)


def test_batch_usage_goes_to_the_keys_tenant(setup):
    gw, _, k = setup
    c = client(gw.url, k["other"])
    f = c.files.create(file=("in.jsonl", jsonl(2)), purpose="batch")
    b = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    run_to_end(c, b.id)

    def tenant_requests() -> int:
        r = httpx.get(gw.url + "/admin/usage?by=tenant", headers=bearer(k["admin"])).json()
        return sum(x["requests"] for x in r["data"] if x["group"] == "other")

    wait_until(lambda: tenant_requests() >= 2, 30, "the ledger rows of the batch")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gantry_cmd("batches", *args), capture_output=True, text=True, env=env, timeout=60
    )


def test_cli(setup, tmp_path):
    gw, _, k = setup
    c = client(gw.url, k["acme"])
    f = c.files.create(file=("in.jsonl", jsonl(2)), purpose="batch")
    b = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    run_to_end(c, b.id)
    env = {"PATH": "/usr/bin", "OPENAI_BASE_URL": gw.url + "/v1", "OPENAI_API_KEY": k["acme"]}
    r = cli("list", env=env)
    assert r.returncode == 0 and b.id in r.stdout, r.stderr
    r = cli("status", b.id, env=env)
    assert r.returncode == 0 and "completed" in r.stdout and "2/2" in r.stdout, r.stdout
    out = tmp_path / "out.jsonl"
    r = cli("download", b.id, "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(x)["custom_id"] for x in out.read_text().splitlines()) == [
        "req-0",
        "req-1",
    ]
    r = cli("status", "batch-nope", env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "No such batch" in r.stderr
    r = cli("status", b.id, env={**env, "OPENAI_API_KEY": k["other"]})
    assert r.returncode != 0 and "No such batch" in r.stderr
    r = cli("list", "--api-key", k["admin"], env={"PATH": "/usr/bin", "OPENAI_BASE_URL": gw.url})
    assert r.returncode == 0 and b.id in r.stdout
    r = cli("cancel", b.id, env=env)
    assert r.returncode != 0 and "completed" in r.stderr and "Traceback" not in r.stderr
    r = cli("list", env={"PATH": "/usr/bin", "OPENAI_BASE_URL": "http://127.0.0.1:1"})
    assert r.returncode != 0 and "Traceback" not in r.stderr


def _restart_case(tmp_path: Path, sig: int) -> tuple[list[str], float, int]:
    """Run 40 lines, stop the gateway with ``sig`` once some are done, start it again:
    (custom ids in the output, engine requests seen, lines done before the stop)."""
    db = f"sqlite:///{tmp_path}/r.db"
    key, _ = new_key(db, "--tenant", "acme")
    env = batch_env(
        tmp_path,
        db,
        GANTRY_BATCHES__CONCURRENCY="2",
        GANTRY_BATCHES__LEASE_S="2",
        GANTRY_SHUTDOWN__GRACE_S="30",
    )
    with sim(tmp_path, "--served-model-name", "m", "--gpu", "H100", "--model", "llama-3.1-8b") as e:
        with gateway(tmp_path, "--engine", e.url, secure=True, env=env, health="/health") as gw:
            wait_http(gw.url, 30, path="/readyz", headers=bearer(key))
            c = client(gw.url, key)
            f = c.files.create(file=("in.jsonl", jsonl(40, max_tokens=16)), purpose="batch")
            b = c.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done_before = wait_until(
                lambda: (n := c.batches.retrieve(b.id).request_counts.completed) >= 4 and n,
                60,
                "some lines done",
            )
            gw.stop(sig)
        port = gw.port
        with gateway(
            tmp_path, "--engine", e.url, secure=True, env=env, health="/health", port=port
        ) as gw2:
            c = client(gw2.url, key)
            done = run_to_end(c, b.id, 120)
            assert done.status == "completed"
            ids = [x["custom_id"] for x in lines_of(c, done.output_file_id)]
            assert lines_of(c, done.error_file_id) == []
        return ids, engine_requests(e.url), int(done_before)


def test_restart_mid_job_runs_every_line_exactly_once(tmp_path):
    ids, seen, done_before = _restart_case(tmp_path, signal.SIGTERM)
    assert done_before < 40  # the restart did happen mid-job
    assert sorted(ids) == sorted(f"req-{i}" for i in range(40))  # each exactly once
    assert seen == 40  # and each reached an engine exactly once


def test_hard_kill_mid_job_loses_nothing(tmp_path):
    ids, seen, done_before = _restart_case(tmp_path, signal.SIGKILL)
    assert done_before < 40
    assert sorted(ids) == sorted(f"req-{i}" for i in range(40))
    # Lines running at the kill (at most `concurrency`) may have reached an engine twice.
    assert 40 <= seen <= 42


def test_two_replicas_share_one_postgres_without_double_execution(tmp_path):
    with fresh_postgres() as db:
        key, _ = new_key(db, "--tenant", "acme")
        env = batch_env(tmp_path, db, GANTRY_BATCHES__CONCURRENCY="3")  # one shared directory
        with (
            sim(
                tmp_path, "--served-model-name", "m", "--gpu", "H100", "--model", "llama-3.1-8b"
            ) as e,
            gateway(tmp_path, "--engine", e.url, secure=True, env=env, health="/health") as a,
            gateway(tmp_path, "--engine", e.url, secure=True, env=env, health="/health") as b,
        ):
            for gw in (a, b):
                wait_http(gw.url, 30, path="/readyz", headers=bearer(key))
            ca, cb = client(a.url, key), client(b.url, key)
            f = ca.files.create(file=("in.jsonl", jsonl(30, max_tokens=16)), purpose="batch")
            batch = cb.batches.create(
                input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
            done = run_to_end(ca, batch.id, 120)
            assert done.status == "completed" and done.request_counts.completed == 30
            ids = [x["custom_id"] for x in lines_of(cb, done.output_file_id)]
            assert sorted(ids) == sorted(f"req-{i}" for i in range(30))
            assert engine_requests(e.url) == 30  # no line ran on both replicas


def test_the_openapi_document_has_the_batch_api(setup):
    gw, _, k = setup
    doc = httpx.get(gw.url + "/openapi.json", headers=bearer(k["acme"])).json()
    assert {"/v1/files", "/v1/files/{file_id}/content", "/v1/batches/{batch_id}/cancel"} <= set(
        doc["paths"]
    )
    assert doc["components"]["schemas"]["BatchRequest"]["required"] == [
        "input_file_id",
        "endpoint",
        "completion_window",
    ]
