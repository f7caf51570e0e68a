from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Proc, sim


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mod")


@pytest.fixture(scope="module")
def fast_sim(module_tmp: Path) -> Iterator[Proc]:
    """One realistic-profile engine, sped up 20x, with the admin endpoint."""
    with sim(
        module_tmp,
        "--model",
        "qwen2.5-1.5b-instruct",
        "--gpu",
        "L4",
        "--speedup",
        "20",
        "--served-model-name",
        "qwen",
        "--served-model-name",
        "qwen-alias",
        "--enable-admin",
    ) as p:
        yield p
