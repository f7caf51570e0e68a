from __future__ import annotations

import pytest
from pydantic import ValidationError

from gantry.config import load_config, masked
from gantry.errors import ConfigError


def test_precedence_yaml_env_flags(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text(
        "port: 9000\nrouting:\n  policy: round_robin\nengines:\n"
        "  - url: http://127.0.0.1:8000\n    api_key: sekret\n"
    )
    cfg = load_config(f, env={})
    assert cfg.port == 9000 and cfg.routing.policy == "round_robin"
    cfg = load_config(f, env={"GANTRY_PORT": "9100", "GANTRY_ROUTING__POLICY": "least_loaded"})
    assert cfg.port == 9100 and cfg.routing.policy == "least_loaded"
    cfg = load_config(f, env={"GANTRY_PORT": "9100"}, overrides={"port": 9200})
    assert cfg.port == 9200
    shown = masked(cfg)
    assert shown["engines"][0]["api_key"] == "***"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("port: 99999\n", "port"),
        ("routing:\n  policy: fastest\n", "routing.policy"),
        ("engines:\n  - url: ftp://x\n", "engines.0.url"),
        ("bogus: 1\n", "bogus"),
        ("port: [\n", "not valid YAML"),
        ("- 1\n", "mapping"),
    ],
)
def test_errors_are_one_line(tmp_path, text, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={})
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", env={})


def test_config_is_frozen():
    cfg = load_config(None, env={})
    with pytest.raises(ValidationError):
        cfg.port = 1  # type: ignore[misc]
    assert cfg.is_embedded
