from __future__ import annotations

import os
import subprocess

import pytest
from pydantic import ValidationError

from gantry.config import is_secret_name, load_config, mask_url, masked
from gantry.errors import ConfigError
from tests.helpers import gantry_cmd


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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://user:hunter2@db/x", "postgresql://user:***@db/x"),
        ("postgresql+asyncpg://u:p%40ss@db:5432/x", "postgresql+asyncpg://u:***@db:5432/x"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://default:s3cret@[::1]:6380/1", "rediss://default:***@[::1]:6380/1"),
        ("http://svc:tok@10.0.0.5:8000", "http://svc:***@10.0.0.5:8000"),
        ("postgresql://user:pa/ss@db/x", "postgresql://user:***@db/x"),  # SQLAlchemy reads it
        ("postgresql://user:p@ss@db/x", "postgresql://user:***@db/x"),  # urllib: last @
        ("postgresql://user@db/x", "postgresql://user@db/x"),  # no password
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # no userinfo
        ("http://host/a:b@c", "http://host/a:b@c"),  # an @ in the path only
        ("sqlite:///gantry.db", "sqlite:///gantry.db"),
        ("sqlite:////var/lib/gantry/keys.db", "sqlite:////var/lib/gantry/keys.db"),
        ("--url=redis://:pw@h:1/0", "--url=redis://:***@h:1/0"),  # inside a longer value
        ("not a url: pw@host", "not a url: pw@host"),
    ],
)
def test_mask_url(url, shown):
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("password", True),
        ("secret", True),
        ("token", True),
        ("client_secret", True),
        ("refresh_token", True),
        ("admin_password", True),
        ("signing_key", True),
        ("api_keys", True),
        ("keys", False),  # redaction.keys: key ids
        ("key_prefix", False),
        ("ssl_keyfile", False),
        ("default_max_tokens", False),
        ("tokens_per_day", False),
    ],
)
def test_secret_field_names(name, secret):
    assert is_secret_name(name) is secret


def _secret_config(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text(
        "engines:\n"
        "  - url: http://svc:engpw@10.0.0.5:8000\n"
        "    api_key: sk-engine\n"
        "security:\n  database_url: postgresql://user:hunter2@db/x\n"
        "ratelimit:\n  redis_url: redis://:rlpw@host:6379/0\n"
        "idempotency:\n  redis_url: redis://idem:idempw@host:6379/1\n"
        "ledger:\n  database_url: postgresql://led:ledpw@db/ledger\n"
    )
    return f


SECRETS = ("engpw", "sk-engine", "hunter2", "rlpw", "idempw", "ledpw")


def test_masked_hides_every_secret_and_keeps_the_rest(tmp_path):
    shown = masked(load_config(_secret_config(tmp_path), env={}))
    assert shown["engines"][0] == {
        **shown["engines"][0],
        "url": "http://svc:***@10.0.0.5:8000",
        "api_key": "***",
    }
    assert shown["security"]["database_url"] == "postgresql://user:***@db/x"
    assert shown["ratelimit"]["redis_url"] == "redis://:***@host:6379/0"
    assert shown["idempotency"]["redis_url"] == "redis://idem:***@host:6379/1"
    assert shown["ledger"]["database_url"] == "postgresql://led:***@db/ledger"
    assert not [s for s in SECRETS if s in repr(shown)]


def test_masked_leaves_a_config_without_secrets_alone():
    cfg = load_config(None, env={})
    assert masked(cfg) == cfg.model_dump(mode="json", by_alias=True)


def test_errors_do_not_echo_secrets(tmp_path):
    f = tmp_path / "bad.yaml"
    for text, needle in [
        ("engines:\n  - url: ftp://u:hunter2@x\n", "ftp://u:***@x"),
        ("security:\n  database_url: [postgresql://u:hunter2@db/x]\n", "security.database_url"),
        ("engines:\n  - url: http://x\n    api_key: [hunter2]\n", "engines.0.api_key"),
        ("engines:\n  - url: http://x\n    bogus_token: hunter2\n", "'***'"),
        ("bogus_password: hunter2\n", "'***'"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError) as exc:
            load_config(f, env={})
        assert needle in str(exc.value) and "hunter2" not in str(exc.value), str(exc.value)


def test_cli_config_show_and_check_print_no_secrets(tmp_path):
    f = _secret_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANTRY_")}
    show = subprocess.run(
        gantry_cmd("config", "show", "-c", str(f)), capture_output=True, text=True, env=env
    )
    assert show.returncode == 0, show.stderr
    assert "postgresql://user:***@db/x" in show.stdout
    assert "redis://:***@host:6379/0" in show.stdout
    assert not [s for s in SECRETS if s in show.stdout + show.stderr]
    bad = tmp_path / "bad.yaml"
    bad.write_text("engines:\n  - url: ftp://u:hunter2@x\n")
    check = subprocess.run(
        gantry_cmd("config", "check", str(bad)), capture_output=True, text=True, env=env
    )
    assert check.returncode == 2 and "ftp://u:***@x" in check.stderr
    assert "hunter2" not in check.stdout + check.stderr


@pytest.mark.parametrize("ratio", ["-0.1", "1.5"])
def test_tracing_sample_ratio_is_a_fraction(ratio):
    with pytest.raises(ConfigError, match=r"tracing\.sample_ratio"):
        load_config(None, env={"GANTRY_TRACING__SAMPLE_RATIO": ratio})
