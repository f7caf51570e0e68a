"""Schemas of the admin API's request bodies and query strings, and their 400 answers.

Strict pydantic models: no coercion (``"5"`` is not an integer, ``"qwen"`` is not a list
of models) and no unknown fields. ``parse_body``/``parse_query`` turn the first
validation error into one ``ClientError`` whose ``param`` is the offending field and
whose message names it: ``priority: must be an integer``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import parse_qs

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from gantry.errors import ClientError
from gantry.state.keys import MAX_NAME, MAX_TENANT, PRIORITY_MAX, PRIORITY_MIN

MAX_MODELS = 100
MAX_EXPIRES_S = 10 * 366 * 86400.0  # ten years
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no control characters (PostgreSQL refuses NUL)

Tenant = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TENANT, pattern=_PRINTABLE)]
# Allow-lists are stored comma-separated, so a model name may not hold a comma.
Model = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^,\x00-\x1f\x7f]*$")
]
Role = Literal["admin", "user", "metrics"]  # gantry.state.keys.ROLES (a test checks)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CreateKey(_Strict):
    """The body of POST /admin/keys."""

    tenant: Tenant = Field(description="Tenant (team) the key belongs to.")
    role: Role = Field(default="user", description="admin, user or metrics.")
    tier: str = Field(default="standard", description="A tier from the configuration.")
    name: Annotated[str, StringConstraints(max_length=MAX_NAME, pattern=_PRINTABLE)] = ""
    models: tuple[Model, ...] = Field(
        default=(), max_length=MAX_MODELS, description="Allowed models; empty: every model."
    )
    priority: Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)] | None = Field(
        default=None, description="Default admission priority (lower is served first)."
    )
    expires_in_s: Annotated[float, Field(gt=0, le=MAX_EXPIRES_S, allow_inf_nan=False)] | None = (
        Field(default=None, description="Seconds until the key expires; none: never.")
    )

    @field_validator("tier")
    @classmethod
    def _known_tier(cls, v: str, info: ValidationInfo) -> str:
        tiers = (info.context or {}).get("tiers")
        if tiers is not None and v not in tiers:
            raise ValueError(f"unknown tier {v!r} (configured: {', '.join(tiers) or 'none'})")
        return v


class NoBody(_Strict):
    """No fields (revoke, rotate): an empty body or {}."""


class ListKeysQuery(_Strict):
    """The query of GET /admin/keys."""

    tenant: Tenant | None = Field(default=None, description="Only this tenant's keys.")


class UsageQuery(_Strict):
    """The query of GET /admin/usage."""

    by: Literal["key", "model", "tenant", "day"] = "model"


NoQuery = NoBody
M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes, context: Mapping[str, Any] | None = None) -> M:
    """Validate a raw JSON body (empty means ``{}``) against ``model``."""
    try:
        return model.model_validate_json(raw or b"{}", context=context)
    except ValidationError as exc:
        raise explain(exc, "body") from None


def parse_query(model: type[M], query: str) -> M:
    """Validate a query string; a parameter given twice is an error, not a list."""
    fields: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if len(values) > 1:
            raise ClientError(f"{name}: given more than once", param=name)
        fields[name] = values[0]
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise explain(exc, "query") from None


def explain(exc: ValidationError, where: str) -> ClientError:
    """The first error as a ClientError naming the field (``param``) and the problem."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    if not loc:  # the document as a whole: invalid JSON or not an object
        what = "is not valid JSON" if err["type"] == "json_invalid" else "must be a JSON object"
        return ClientError(f"Request {where} {what}.", param=where)
    param = str(loc[0])
    path = param + "".join(f"[{p}]" for p in loc[1:])
    return ClientError(f"{path}: {_reason(err)}", param=param)


_TYPES = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "tuple_type": "must be a list of strings",
    "list_type": "must be a list",
    "missing": "is required",
    "extra_forbidden": "is not a known field",
}


def _reason(err: ErrorDetails) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _TYPES:
        return _TYPES[kind]
    if kind == "literal_error":
        return f"must be one of {ctx['expected']}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "string_pattern_mismatch":
        return "must not contain control characters" + (
            " or commas" if "," in str(ctx.get("pattern")) else ""
        )
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        word = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
        op, bound = word.get(kind, "<="), next(iter(ctx.values()))
        return f"must be {op} {bound}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"]).lower()


__all__ = [
    "CreateKey",
    "ListKeysQuery",
    "NoBody",
    "NoQuery",
    "UsageQuery",
    "explain",
    "parse_body",
    "parse_query",
]
