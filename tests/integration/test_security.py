"""Security and tenancy end to end: keys, roles, limits, ledger, redaction, JWT, TLS."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from gantry.netutil import free_port
from tests.helpers import (
    bearer,
    fresh_postgres,
    gantry_cmd,
    gateway,
    keys,
    new_key,
    require_redis,
    sim,
    wait_http,
    wait_key_active,
)
from tests.recording_engine import recording_engine

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def secured(module_tmp: Path):
    db = f"sqlite:///{module_tmp}/sec.db"
    user, _ = new_key(db, "--tenant", "acme")
    admin, _ = new_key(db, "--tenant", "ops", "--role", "admin")
    metrics, _ = new_key(db, "--tenant", "ops", "--role", "metrics")
    revoked, revoked_id = new_key(db, "--tenant", "acme")
    assert keys(db, "revoke", revoked_id).returncode == 0
    cfg = module_tmp / "sec.yaml"
    cfg.write_text(
        "security:\n  key_refresh_s: 0.5\n  readyz_public: false\n"
        "tiers:\n  tiny: {rpm: 3}\n  standard: {rpm: 1000, tpm: 1000000}\n"
        "  admin: {}\nprices:\n  m: {prompt_per_1m: 1.0, completion_per_1m: 2.0}\n"
    )
    with (
        sim(module_tmp, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(
            module_tmp,
            "-c",
            str(cfg),
            "--engine",
            e.url,
            secure=True,
            env={"GANTRY_SECURITY__DATABASE_URL": db},
            health="/health",
        ) as gw,
    ):
        # /readyz is not public here: wait for the engines with a key that may ask.
        wait_http(gw.url, 30, path="/readyz", headers=bearer(admin))
        yield (
            gw,
            db,
            {"user": user, "admin": admin, "metrics": metrics, "revoked": revoked, "cfg": str(cfg)},
        )


# (method, path, body) for every route the gateway serves
ROUTES = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "m", "prompt": "x", "max_tokens": 2}),
    ("POST", "/tokenize", {"model": "m", "prompt": "x"}),
    ("GET", "/openapi.json", None),
    ("GET", "/metrics", None),
    ("GET", "/readyz", None),
    ("GET", "/admin/keys", None),
    ("GET", "/admin/audit", None),
]
ALLOWED = {  # who may call what (the table in docs/security.md)
    "user": {
        "/v1/models",
        "/v1/chat/completions",
        "/v1/completions",
        "/tokenize",
        "/openapi.json",
        "/readyz",
    },
    "metrics": {"/metrics", "/readyz"},
    "admin": {r[1] for r in ROUTES},
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_route_walk(secured, method, path, body):
    gw, _, k = secured

    def call(key: str | None) -> httpx.Response:
        return httpx.request(method, gw.url + path, json=body, headers=bearer(key), timeout=30)

    for key, status in (
        (None, 401),
        ("gk_nope_nope", 401),
        ("not-a-key", 401),
        (k["revoked"], 401),
    ):
        r = call(key)
        assert r.status_code == status, (key, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
    for role in ("user", "metrics", "admin"):
        r = call(k[role])
        if path in ALLOWED[role]:
            assert r.status_code < 400, (role, r.text)
        else:
            assert r.status_code == 403, (role, r.text)
            assert r.json()["error"]["type"] == "permission_error"
    assert httpx.get(gw.url + "/health").status_code == 200  # public


def test_security_headers_and_rate_limit_headers(secured):
    gw, _, k = secured
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(k["user"]))
    assert r.headers["x-content-type-options"] == "nosniff"
    assert int(r.headers["x-ratelimit-limit-requests"]) == 1000
    assert int(r.headers["x-ratelimit-remaining-requests"]) < 1000
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert int(r.headers["x-ratelimit-limit-tokens"]) == 1000000


def test_rpm_limit_gives_429_with_retry_after(secured):
    gw, db, k = secured
    tiny, _ = new_key(db, "--tenant", "small", "--tier", "tiny", "--config", k["cfg"])
    wait_key_active(gw.url, tiny)
    codes = [
        httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(tiny))
        for _ in range(5)
    ]
    assert [c.status_code for c in codes] == [200, 200, 200, 429, 429]
    last = codes[-1]
    assert last.json()["error"]["type"] == "rate_limit_error"
    assert "requests per minute" in last.json()["error"]["message"]
    assert int(last.headers["retry-after"]) >= 1


def test_model_allow_list_and_admin_api_with_audit(secured):
    gw, _, k = secured
    adm = bearer(k["admin"])
    r = httpx.post(
        gw.url + "/admin/keys",
        headers=adm,
        json={"tenant": "lab", "models": ["other"], "name": "restricted"},
    )
    assert r.status_code == 201
    restricted = r.json()["key"]
    assert r.json()["models"] == ["other"] and restricted.startswith("gk_")
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(restricted))
    assert r.status_code == 403 and "may not use model" in r.json()["error"]["message"]
    key_id = restricted.split("_")[1]
    r = httpx.post(gw.url + f"/admin/keys/{key_id}/rotate", headers=adm)
    assert r.status_code == 200 and r.json()["replaces"] == key_id
    rotated = r.json()["key"]
    assert httpx.post(gw.url + "/v1/models", headers=bearer(restricted)).status_code in (401, 405)
    assert httpx.get(gw.url + "/v1/models", headers=bearer(restricted)).status_code == 401
    assert httpx.get(gw.url + "/v1/models", headers=bearer(rotated)).status_code == 200
    new_id = rotated.split("_")[1]
    assert httpx.post(gw.url + f"/admin/keys/{new_id}/revoke", headers=adm).status_code == 200
    assert httpx.get(gw.url + "/v1/models", headers=bearer(rotated)).status_code == 401
    listed = httpx.get(gw.url + "/admin/keys", headers=adm).json()["data"]
    assert all("secret" not in json.dumps(x) and "gk_" not in json.dumps(x) for x in listed)
    actions = [a["action"] for a in httpx.get(gw.url + "/admin/audit", headers=adm).json()["data"]]
    assert {"key.create", "key.rotate", "key.revoke"} <= set(actions)
    bad = httpx.post(gw.url + "/admin/keys", headers=adm, json={"tenant": "x", "tier": "gold"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tier"
    assert bad.json()["error"]["message"].startswith("tier: unknown tier 'gold'")


def test_admin_api_refuses_ill_typed_fields_and_the_good_key_works(secured):
    gw, db, k = secured
    adm = bearer(k["admin"])
    for body, param, message in (
        ({"tenant": "typed", "priority": "high"}, "priority", "priority: must be an integer"),
        ({"tenant": "typed", "models": "qwen"}, "models", "models: must be a list of strings"),
        ({"tenant": "typed", "role": "root"}, "role", "role: must be one of"),
        ({"tenant": "typed", "ttl": 5}, "ttl", "ttl: is not a known field"),
    ):
        r = httpx.post(gw.url + "/admin/keys", headers=adm, json=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["type"], err["param"]) == ("invalid_request_error", param)
        assert err["message"].startswith(message)
    listed = httpx.get(gw.url + "/admin/keys", params={"tenant": "typed"}, headers=adm)
    assert listed.status_code == 200 and listed.json()["data"] == []  # nothing was stored
    for content, status in ((b"[1]", 400), (b"{", 400), (b" " * (65 * 1024), 413)):
        r = httpx.post(gw.url + "/admin/keys", headers=adm, content=content)
        assert r.status_code == status and r.json()["error"]["param"] in ("body", None), r.text
    r = httpx.post(gw.url + "/admin/keys/0123456789ab/revoke", headers=adm)
    assert r.status_code == 404 and r.json()["error"]["param"] == "key_id"
    r = httpx.post(
        gw.url + "/admin/keys",
        headers=adm,
        json={"tenant": "typed", "priority": 5, "models": ["m"], "expires_in_s": 600},
    )
    assert r.status_code == 201, r.text
    made = r.json()
    assert (made["priority"], made["models"], made["tenant"]) == (5, ["m"], "typed")
    r = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(made["key"]))
    assert r.status_code == 200, r.text
    cli = keys(db, "create", "--tenant", "typed", "--model", "a,b")  # the store checks too
    assert cli.returncode == 2 and cli.stderr.startswith("gantry: error: models must be")


def test_idempotency_keys_are_scoped_per_tenant(secured):
    gw, db, k = secured
    other, _ = new_key(db, "--tenant", "globex")
    wait_key_active(gw.url, other)
    idem = {"Idempotency-Key": str(uuid.uuid4())}
    body = {**CHAT, "seed": 3}
    a = httpx.post(
        gw.url + "/v1/chat/completions", json=body, headers={**bearer(k["user"]), **idem}
    )
    b = httpx.post(gw.url + "/v1/chat/completions", json=body, headers={**bearer(other), **idem})
    assert a.status_code == b.status_code == 200
    assert "idempotent-replayed" not in b.headers  # another tenant's answer is not replayed
    c = httpx.post(
        gw.url + "/v1/chat/completions", json=body, headers={**bearer(k["user"]), **idem}
    )
    assert c.headers["idempotent-replayed"] == "true"


def test_usage_ledger_and_report(secured):
    gw, db, k = secured
    for _ in range(3):
        httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(k["user"]))
    r = httpx.get(gw.url + "/admin/usage?by=model", headers=bearer(k["admin"]))
    row = next(x for x in r.json()["data"] if x["model"] == "m")
    assert row["requests"] >= 3 and row["completion_tokens"] >= 6 and row["cost"] > 0
    out = subprocess.run(
        gantry_cmd("usage", "--by", "key"),
        capture_output=True,
        text=True,
        env={"GANTRY_SECURITY__DATABASE_URL": db, "PATH": "/usr/bin"},
    )
    assert out.returncode == 0 and k["user"].split("_")[1] in out.stdout


def test_cli_keys_errors(tmp_path):
    db = f"sqlite:///{tmp_path}/k.db"
    r = keys(db, "create", "--tenant", "x", "--role", "root")
    assert r.returncode == 2 and r.stderr.startswith("gantry: error:")
    r = keys(db, "create", "--tenant", "x", "--tier", "platinum")
    assert r.returncode == 2 and "unknown tier" in r.stderr
    assert keys(db, "revoke", "nope").returncode == 2
    assert keys(db, "rotate", "nope").returncode == 2
    secret, key_id = new_key(db, "--tenant", "x", "--model", "m1")
    listed = keys(db, "list").stdout
    assert key_id in listed and secret not in listed and "m1" in listed


def test_cli_keys_list_shows_expiry(tmp_path):
    db = f"sqlite:///{tmp_path}/k.db"
    for bad in ("0", "-5"):
        r = keys(db, "create", "--tenant", "x", "--expires-in", bad)
        assert r.returncode == 2 and r.stdout == "", r
        assert r.stderr.startswith("gantry: error: --expires-in") and r.stderr.count("\n") == 1
    _, expiring = new_key(db, "--tenant", "x", "--expires-in", "0.5")
    _, forever = new_key(db, "--tenant", "x")

    def rows() -> dict[str, list[str]]:
        out = keys(db, "list").stdout
        return {line.split()[0]: line.split() for line in out.splitlines()}

    deadline = time.monotonic() + 30
    while (status := rows()[expiring][4]) != "expired" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == "expired"
    listed = rows()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", listed[expiring][5])
    assert listed[forever][4:6] == ["active", "-"]


def test_two_replicas_share_one_limit_over_redis(tmp_path):
    redis = require_redis()
    db = f"sqlite:///{tmp_path}/r.db"
    prefix = f"gantry-test-{uuid.uuid4().hex[:8]}:"
    cfg = tmp_path / "r.yaml"
    cfg.write_text(
        f"ratelimit:\n  store: redis\n  key_prefix: '{prefix}'\n"
        "tiers:\n  tiny: {rpm: 4}\n  standard: {}\n"
    )
    key, _ = new_key(db, "--tenant", "t", "--tier", "tiny", "--config", str(cfg))
    env = {"GANTRY_SECURITY__DATABASE_URL": db}
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "-c", str(cfg), "--engine", e.url, secure=True, env=env) as a,
        gateway(tmp_path, "-c", str(cfg), "--engine", e.url, secure=True, env=env) as b,
    ):
        codes = [
            httpx.post(
                (a if i % 2 else b).url + "/v1/chat/completions", json=CHAT, headers=bearer(key)
            ).status_code
            for i in range(8)
        ]
    assert codes.count(200) == 4 and codes.count(429) == 4  # one limit, not one per replica
    r = redis.Redis(host="127.0.0.1", port=6379)
    for k in r.scan_iter(prefix + "*"):
        r.delete(k)


def test_redaction_before_the_engine(tmp_path):
    with recording_engine("m") as (url, seen):
        cfg = tmp_path / "p.yaml"
        cfg.write_text(f"engines:\n  - url: {url}\nredaction:\n  enabled: true\n")
        with gateway(tmp_path, "-c", str(cfg)) as gw:
            httpx.post(
                gw.url + "/v1/chat/completions",
                json={
                    "model": "m",
                    "messages": [
                        {
                            "role": "user",
                            "content": "I am bob@example.com, card 4111 1111 1111 1111",
                        }
                    ],
                },
            )
    sent = json.loads(seen[-1]["_body"])["messages"][0]["content"]
    assert sent == "I am [REDACTED_EMAIL], card [REDACTED_CARD]"


def test_jwt_bearer_tokens(tmp_path):
    jwt = pytest.importorskip("jwt")
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))

    def token(**claims: object) -> str:
        base = {
            "sub": "alice",
            "iss": "https://idp",
            "aud": "gantry",
            "exp": time.time() + 60,
            "tenant": "acme",
            "role": "user",
        }
        return jwt.encode({**base, **claims}, key, algorithm="RS256", headers={"kid": "k1"})

    cfg = tmp_path / "j.yaml"
    cfg.write_text(
        f"security:\n  jwt:\n    enabled: true\n    issuer: https://idp\n"
        f"    audience: gantry\n    jwks_file: {jwks}\n"
    )
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "-c", str(cfg), "--engine", e.url, secure=True) as gw,
    ):
        ok = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(token()))
        assert ok.status_code == 200
        for bad in (token(aud="other"), token(exp=time.time() - 10), token(role="root")):
            assert (
                httpx.post(
                    gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(bad)
                ).status_code
                == 401
            )
        assert httpx.get(gw.url + "/metrics", headers=bearer(token())).status_code == 403
        assert (
            httpx.get(gw.url + "/metrics", headers=bearer(token(role="metrics"))).status_code == 200
        )


def test_tls(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(k.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(k, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    port = free_port()
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(
            tmp_path,
            "--engine",
            e.url,
            "--ssl-certfile",
            str(tmp_path / "c.pem"),
            "--ssl-keyfile",
            str(tmp_path / "k.pem"),
            port=port,
            wait=False,
        ) as gw,
    ):
        url = f"https://127.0.0.1:{port}"
        wait_http(url, 30, gw.proc, path="/readyz", verify=False)
        r = httpx.post(url + "/v1/chat/completions", json=CHAT, verify=False)
        assert r.status_code == 200
    r = subprocess.run(
        gantry_cmd("serve", "--ssl-certfile", str(tmp_path / "c.pem")),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "go together" in r.stderr


def test_ledger_on_postgres_survives_sigterm(tmp_path):
    import asyncio

    asyncpg = pytest.importorskip("asyncpg")
    with fresh_postgres() as url:
        cfg = tmp_path / "l.yaml"
        cfg.write_text("ledger:\n  enabled: true\n  flush_interval_s: 30\n  batch_size: 100000\n")
        with (
            sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
            gateway(
                tmp_path,
                "-c",
                str(cfg),
                "--engine",
                e.url,
                env={"GANTRY_SECURITY__DATABASE_URL": url},
            ) as gw,
        ):
            for _ in range(25):
                assert (
                    httpx.post(
                        gw.url + "/v1/completions",
                        json={"model": "m", "prompt": "x", "max_tokens": 2},
                    ).status_code
                    == 200
                )
            gw.proc.send_signal(signal.SIGTERM)  # rows are still queued (30 s flush)
            assert gw.proc.wait(20) in (0, -signal.SIGTERM)

        async def count() -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT count(*) FROM gantry_usage WHERE completion_tokens = 2"
                    )
                )
            finally:
                await conn.close()

        assert asyncio.run(count()) == 25


def test_limit_store_unreachable_fails_open_for_rates_and_closed_for_quotas(tmp_path):
    db = f"sqlite:///{tmp_path}/f.db"
    cfg = tmp_path / "f.yaml"
    dead = free_port()  # nothing listens there
    cfg.write_text(
        f"ratelimit:\n  store: redis\n  redis_url: redis://127.0.0.1:{dead}/0\n"
        "tiers:\n  rates: {rpm: 100}\n  quota: {tokens_per_day: 100000}\n"
        "  standard: {}\n"
    )
    rates, _ = new_key(db, "--tenant", "a", "--tier", "rates", "--config", str(cfg))
    quota, _ = new_key(db, "--tenant", "b", "--tier", "quota", "--config", str(cfg))
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(
            tmp_path,
            "-c",
            str(cfg),
            "--engine",
            e.url,
            secure=True,
            env={"GANTRY_SECURITY__DATABASE_URL": db},
        ) as gw,
    ):
        ok = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(rates))
        assert ok.status_code == 200  # rate limits fail open
        shut = httpx.post(gw.url + "/v1/chat/completions", json=CHAT, headers=bearer(quota))
        assert shut.status_code == 503 and "retry-after" in shut.headers  # quotas fail closed
        assert "cannot be checked" in shut.json()["error"]["message"]
