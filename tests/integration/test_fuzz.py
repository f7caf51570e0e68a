"""Fuzz the gateway with schemathesis from its own OpenAPI document (short form).

Every generated request must get an answer below 500 (``not_a_server_error``) and every
answer, errors included, must match the document — errors the ``Error`` schema, i.e.
the OpenAI shape (``response_schema_conformance``). Long form: the same command with a
larger ``--max-examples`` (docs/security.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import bearer, gateway, new_key, sim

pytestmark = pytest.mark.slow


def test_schemathesis_finds_no_5xx_and_only_openai_errors(tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed")
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(tmp_path, "--engine", e.url) as gw,
    ):
        r = subprocess.run(
            [
                exe,
                "run",
                gw.url + "/openapi.json",
                "--checks",
                "not_a_server_error,response_schema_conformance",
                "--max-examples",
                "25",
                "--request-timeout",
                "30",
                "--phases",
                "examples,coverage,fuzzing",
            ],
            capture_output=True,
            text=True,
            timeout=540,
            cwd=tmp_path,  # schemathesis writes a cache where it runs
        )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_schemathesis_admin_api_with_auth_on(tmp_path: Path) -> None:
    """The admin operations, fuzzed with an admin key (following created keys into revoke
    and rotate): no 5xx, only documented statuses, every error in the OpenAI shape, and
    every key the fuzzer managed to create is stored with well-typed attributes."""
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("schemathesis is not installed")
    db = f"sqlite:///{tmp_path}/fuzz.db"
    admin, _ = new_key(db, "--tenant", "ops", "--role", "admin")
    with (
        sim(tmp_path, "--served-model-name", "m", "--profile", "instant") as e,
        gateway(
            tmp_path,
            "--engine",
            e.url,
            secure=True,
            env={"GANTRY_SECURITY__DATABASE_URL": db},
        ) as gw,
    ):
        r = subprocess.run(
            [
                exe,
                "run",
                gw.url + "/openapi.json",
                "--header",
                f"Authorization: Bearer {admin}",
                "--include-path-regex",
                "^/admin/",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,"
                "response_schema_conformance",
                "--max-examples",
                "30",
                "--request-timeout",
                "30",
                "--phases",
                "examples,coverage,fuzzing,stateful",
            ],
            capture_output=True,
            text=True,
            timeout=540,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
        assert "Traceback" not in gw.logs()
        listed = httpx.get(gw.url + "/admin/keys", headers=bearer(admin)).json()["data"]
    assert len(listed) > 1  # the fuzzer created keys
    for k in listed:
        assert k["role"] in ("admin", "user", "metrics") and isinstance(k["tenant"], str), k
        assert all(isinstance(m, str) and m for m in k["models"]), k
        assert k["priority"] is None or type(k["priority"]) is int, k
