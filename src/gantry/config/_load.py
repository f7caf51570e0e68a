"""Loading the configuration (YAML < GANTRY_* variables < flags), one-line errors,
and the masked view ``gantry config show`` prints."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gantry.config._models import EngineSpec, GatewayConfig
from gantry.errors import ConfigError

MASK = "***"
# api_key, password, secret, token, and any name ending in _key/_secret/_token/_password
# (api_keys too, but not _tokens: max_tokens counts tokens). Matched on field names, so
# new fields are covered; a bare `key(s)` names key ids (redaction.keys), not secrets.
_SECRET_NAME = re.compile(r"(?:^|_)(?:keys?|secrets?|token|passwords?)$")
_BARE = {"key", "keys"}
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")


def is_secret_name(name: str) -> bool:
    name = name.lower()
    return name not in _BARE and _SECRET_NAME.search(name) is not None


def _mask_userinfo(url: re.Match[str]) -> str:
    scheme, _, rest = url.group().partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or not password or "/" in user:
        return url.group()
    return f"{scheme}://{user}:{MASK}@{host}"


def mask_url(value: str) -> str:
    """``scheme://user:pw@host/x`` -> ``scheme://user:***@host/x``, wherever in ``value``.

    The userinfo runs to the last ``@``, as urllib reads it, so a password holding an
    unencoded ``/`` (SQLAlchemy accepts one) is masked whole. An ``@`` later in a path
    can make this mask more than the password: that beats printing one.
    """
    return _URL.sub(_mask_userinfo, value) if "://" in value else value


def mask_secrets(data: Any, name: str = "") -> Any:
    """Plain data (a config dump, a bad input) with secret fields and URL passwords masked."""
    if isinstance(data, Mapping):
        return {k: mask_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [mask_secrets(v, name) for v in data]
    if is_secret_name(name) and data not in (None, "") and not isinstance(data, bool):
        return MASK
    return mask_url(data) if isinstance(data, str) else data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith("GANTRY_") or key == "GANTRY_CONFIG":
            continue
        path = key[len("GANTRY_") :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        try:
            node[path[-1]] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError:
            node[path[-1]] = raw
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _one_line(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "config"
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    field = next((p for p in reversed(err["loc"]) if isinstance(p, str)), "")
    value = mask_secrets(err.get("input"), field)  # the bad value may be a secret
    shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
    return f"{loc}: {err['msg']}{shown}{extra}"


one_line_error = _one_line  # the one-line form of a validation error


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {p}{where}: not valid YAML") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return data


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """Build the configuration once; raises ConfigError with a one-line message."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get("GANTRY_CONFIG")
    if path:
        data = read_yaml(path)
    data = _merge(data, _env_overrides(env))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


@dataclass(frozen=True)
class ConfigSource:
    """Where a running gateway's configuration comes from, to read it again (SIGHUP,
    ``POST /admin/reload``): the same file, ``GANTRY_*`` variables and flags. Picklable,
    so worker processes get it too. ``engines``: engines started by the gateway itself
    (the embedded default, or ``engines.launch``), kept with the file's own."""

    path: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    engines: tuple[EngineSpec, ...] = ()

    def __call__(self) -> GatewayConfig:
        cfg = load_config(self.path, overrides=self.overrides)
        if self.engines and (cfg.is_embedded or cfg.launch):
            return cfg.model_copy(update={"engines": (*cfg.engines, *self.engines)})
        return cfg


def masked(cfg: GatewayConfig) -> dict[str, Any]:
    """The configuration as plain data with secrets and URL passwords replaced by ``***``."""
    return dict(mask_secrets(cfg.model_dump(mode="json", by_alias=True)))
