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

import pytest

from tests.helpers import gateway, sim

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
