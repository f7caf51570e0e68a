"""Turn a completions/chat body into simulator work, with vLLM's checks and messages."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from gantry.protocol import error_bytes
from gantry.sim.chat_format import FORMATS, ChatFormat, prompt_ids
from gantry.sim.logprobs import LogprobRequest, check_max, parse_logprobs
from gantry.sim.sequence import SamplingSpec
from gantry.sim.tokenizer import Tokenizer

MAX_STOP_STRINGS = 4
MAX_PROMPTS = 1024


class VLLMError(Exception):
    """An error answered the way vLLM answers it."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param

    def body(self) -> bytes:
        return error_bytes(self.message, self.type, param=self.param, code=self.status)


def invalid(message: str, param: str | None, value: Any = None) -> VLLMError:
    """vLLM's VLLMValidationError: ``message (parameter=..., value=...)``, each part only
    when set (``vllm/exceptions.py::VLLMValidationError.__str__``)."""
    extras = [f"{k}={v}" for k, v in (("parameter", param), ("value", value)) if v is not None]
    text = f"{message} ({', '.join(extras)})" if extras else message
    return VLLMError(400, text, "BadRequestError", param)


def bad_request(message: str) -> VLLMError:
    """``create_error_response(message)``: a plain 400 BadRequestError."""
    return VLLMError(400, message, "BadRequestError")


def schema_error(loc: str, msg: str, value: Any) -> VLLMError:
    """Pydantic-style schema error, as FastAPI/vLLM report it (type "Bad Request")."""
    detail = {"type": "value_error", "loc": ["body", *loc.split(".")], "msg": msg, "input": value}
    text = f"1 validation error:\n  {json.dumps(detail, default=str)}"
    return VLLMError(400, text, "Bad Request", f"body.{loc}")


@dataclass(frozen=True, slots=True)
class ToolPlan:
    name: str
    arguments: str
    named: bool  # forced by name (finish_reason "stop") vs "required"/auto ("tool_calls")
    auto: bool = False  # chosen by the model under "auto" (content null, not "")


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Server flags that change how requests are checked and answered."""

    auto_tools: bool = False  # --enable-auto-tool-choice
    tool_parser: str | None = None  # --tool-call-parser
    max_logprobs: int = 20  # --max-logprobs
    chat: ChatFormat = FORMATS["chatml"]  # the model family's template and BOS


@dataclass(frozen=True, slots=True)
class Work:
    """One request, ready for the engine: prompts x n choices."""

    chat: bool
    model: str
    prompts: list[list[int]]
    n: int
    sampling: list[SamplingSpec]  # one per prompt (max_tokens depends on prompt length)
    stream: bool
    include_usage: bool
    continuous_usage: bool
    echo_prompts: list[str] | None
    tool: ToolPlan | None
    cache_salt: str | None
    logprobs: LogprobRequest = LogprobRequest()
    kv_params: Any = None  # kv_transfer_params (P/D), read by the server when it has a role
    external_tokens: int = 0  # prompt tokens whose KV a prefill engine sent (P/D decode)


def _int(body: dict[str, Any], key: str, default: int | None) -> int | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise schema_error(key, "Input should be a valid integer", v)
    return v


def _float(body: dict[str, Any], key: str, default: float | None) -> float | None:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise schema_error(key, "Input should be a valid number", v)
    return float(v)


def _sampling_ranges(body: dict[str, Any]) -> None:
    """The ranges ``SamplingParams._verify_args`` (vllm/sampling_params.py) enforces."""
    for key in ("presence_penalty", "frequency_penalty"):
        v = _float(body, key, None)
        if v is not None and not -2.0 <= v <= 2.0:
            raise invalid(f"{key} must be in [-2, 2], got {v}.", key, v)
    rep = _float(body, "repetition_penalty", None)
    if rep is not None and rep <= 0.0:
        raise invalid(
            f"repetition_penalty must be greater than zero, got {rep}.", "repetition_penalty", rep
        )
    top_k = _int(body, "top_k", None)
    if top_k is not None and top_k < -1:
        raise invalid(f"top_k must be 0 (disable), or at least 1, got {top_k}.", "top_k", top_k)
    min_p = _float(body, "min_p", None)
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise invalid(f"min_p must be in [0, 1], got {min_p}.", "min_p", min_p)
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        # generate/base/protocol.py::validate_cache_salt
        raise invalid(
            "Parameter 'cache_salt' must be a non-empty string if provided.", "cache_salt"
        )
    rf = body.get("response_format")
    if isinstance(rf, dict) and rf.get("type") == "json_schema" and rf.get("json_schema") is None:
        # ChatCompletionRequest.validate_response_format
        raise invalid(
            "When response_format type is 'json_schema', the 'json_schema' field must be provided.",
            "response_format",
        )


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if len(stop) > MAX_STOP_STRINGS:
            raise invalid(
                f"At most {MAX_STOP_STRINGS} stop strings are allowed.", "stop", len(stop)
            )
        return tuple(s for s in stop if s)
    raise schema_error("stop", "Input should be a valid string or list of strings", stop)


def _prompts(
    body: dict[str, Any], tok: Tokenizer, fmt: ChatFormat
) -> tuple[list[list[int]], list[str]]:
    prompt = body.get("prompt")
    if prompt is None or prompt == "" or prompt == []:
        raise invalid(
            "Either prompt or prompt_embeds must be provided and non-empty.", "prompt", prompt
        )
    if isinstance(prompt, str):
        return [prompt_ids(tok, fmt, prompt)], [prompt]
    if not isinstance(prompt, list):
        raise schema_error("prompt", "Input should be a valid string or list", prompt)
    if all(isinstance(p, str) for p in prompt):
        items = [prompt_ids(tok, fmt, p) for p in prompt]
        texts = list(prompt)
    elif all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        items, texts = [list(prompt)], [tok.decode(list(prompt))]
    elif all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
        items, texts = [list(p) for p in prompt], [tok.decode(list(p)) for p in prompt]
    else:
        raise schema_error(
            "prompt", "Input should be a string, list of strings or token ids", "..."
        )
    if len(items) > MAX_PROMPTS:
        raise invalid(f"At most {MAX_PROMPTS} prompts are allowed.", "prompt", len(items))
    for ids in items:
        if not ids:
            raise invalid("Prompt cannot be empty.", "prompt", "[]")
        bad = next((t for t in ids if t < 0 or t >= tok.vocab_size), None)
        if bad is not None:
            raise invalid(f"Token id {bad} is out of vocabulary", "prompt", bad)
    return items, texts


def _messages(body: dict[str, Any], tok: Tokenizer, fmt: ChatFormat) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise schema_error("messages", "Field required", messages)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise schema_error(f"messages.{i}", "Input should be a valid message", m)
    add_gen = body.get("add_generation_prompt", True) is not False
    return tok.encode(fmt.render(messages, add_generation_prompt=add_gen))


_CORRECT_USAGE = 'Correct usage: `{"type": "function", "function": {"name": "my_function"}}`'


def _check_tool_usage(body: dict[str, Any]) -> Any:
    """``ChatCompletionRequest.check_tool_usage`` (chat_completion/protocol.py): the
    effective ``tool_choice``, or a 400 with vLLM's wording."""
    tools = body.get("tools")
    if tools == []:
        raise invalid(
            "`tools` must not be an empty array. "
            "Either provide at least one tool or omit the field entirely.",
            "tools",
        )
    choice = body.get("tool_choice", "auto" if tools else "none")
    if choice is None or choice == "none":
        return "none"
    if tools is None:
        raise invalid("When using `tool_choice`, `tools` must be set.", "tool_choice")
    if not isinstance(tools, list):
        raise schema_error("tools", "Input should be a valid list", tools)
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise schema_error(f"tools.{i}.function", "Field required", t)
    if choice not in ("auto", "required") and not isinstance(choice, dict):
        raise invalid(
            f"Invalid value for `tool_choice`: {choice}! "
            'Only named tools, "none", "auto" or "required" are supported.',
            "tool_choice",
        )
    if isinstance(choice, dict):
        function = choice.get("function")
        if not isinstance(function, dict):
            raise invalid(
                f"Invalid value for `function`: `{function}` in `tool_choice`! {_CORRECT_USAGE}",
                "tool_choice.function",
            )
        if "name" not in function:
            raise invalid(
                f"Expected field `name` in `function` in `tool_choice`! {_CORRECT_USAGE}",
                "tool_choice.function.name",
            )
        name = function["name"]
        if not isinstance(name, str) or not name:
            raise invalid(
                f"Invalid `name` in `function`: `{name}` in `tool_choice`! {_CORRECT_USAGE}",
                "tool_choice.function.name",
            )
        if all(t["function"]["name"] != name for t in tools):
            raise invalid(
                "The tool specified in `tool_choice` does not match any of the specified `tools`",
                "tool_choice",
            )
    return choice


def _tool_plan(
    body: dict[str, Any], seed: int, opts: ServerOptions, messages: list[Any]
) -> ToolPlan | None:
    choice = _check_tool_usage(body)
    if choice == "none":
        return None
    # OnlineRenderer.render_chat (vllm/renderers/online_renderer.py): without a tool
    # parser, "auto" needs both flags and a forced choice needs the parser.
    if opts.tool_parser is None:
        if choice == "auto" and not opts.auto_tools:
            raise bad_request(
                '"auto" tool choice requires --enable-auto-tool-choice and '
                "--tool-call-parser to be set"
            )
        if choice != "auto":
            desc = (
                f'function "{choice["function"]["name"]}"'
                if isinstance(choice, dict)
                else f'"{choice}"'
            )
            raise bad_request(f"tool_choice={desc} requires --tool-call-parser to be set")
    funcs = {t["function"]["name"]: t["function"] for t in body["tools"]}
    if isinstance(choice, dict):
        fn, named = funcs[choice["function"]["name"]], True
    elif choice == "required":
        fn, named = next(iter(funcs.values())), False
    elif not opts.auto_tools:
        return None  # a parser without --enable-auto-tool-choice: plain text
    else:
        # "auto": the simulated model calls a tool unless it has just had a tool's result.
        last = messages[-1] if messages else {}
        if isinstance(last, dict) and last.get("role") == "tool":
            return None
        fn = next(iter(funcs.values()))
        args = json_for_schema(fn.get("parameters") or {}, random.Random(seed))
        return ToolPlan(fn["name"], json.dumps(args), named=False, auto=True)
    args = json_for_schema(fn.get("parameters") or {}, random.Random(seed))
    return ToolPlan(fn["name"], json.dumps(args), named)


def json_for_schema(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A deterministic value that satisfies a (simple) JSON schema."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: json_for_schema(v, rng, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [json_for_schema(schema.get("items") or {}, rng, depth + 1)]
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        return round(
            rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 100))), 2
        )
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(["alpha", "bravo", "charlie", "delta", "echo"])


def json_object_text(max_tokens: int, rng: random.Random, tok: Tokenizer) -> str:
    """Valid JSON that fits in ``max_tokens`` of ``tok`` (the output always closes)."""
    words = ["model", "answer", "token", "value", "result", "cache", "batch"]
    budget = max_tokens - len(tok.encode('{"result": ""}', allow_special=False))
    if budget < 0:
        return "{}"
    chosen: list[str] = []
    while len(chosen) < 200:
        w = rng.choice(words)
        cost = len(tok.encode((" " if chosen else "") + w, allow_special=False))
        if cost > budget:
            break
        budget -= cost
        chosen.append(w)
    return json.dumps({"result": " ".join(chosen)})


def parse(
    body: dict[str, Any],
    *,
    chat: bool,
    served: list[str],
    tok: Tokenizer,
    max_model_len: int,
    request_seed: int,
    server: ServerOptions = ServerOptions(),
) -> Work:
    model = body.get("model")
    if model is not None and model not in served:
        raise VLLMError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {', '.join(served)}.",
            "NotFoundError",
            "model",
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise schema_error("stream", "Input should be a valid boolean", stream)
    opts = body.get("stream_options")
    if opts is not None and not stream:
        raise invalid(
            "Stream options can only be defined when `stream=True`.", "stream_options", opts
        )
    if opts is not None and not isinstance(opts, dict):
        raise schema_error("stream_options", "Input should be a valid dictionary", opts)
    n = _int(body, "n", 1) or 0
    if n < 1:
        raise invalid(f"n must be at least 1, got {n}.", "n", n)
    temperature = _float(body, "temperature", 1.0)
    assert temperature is not None
    if temperature < 0:
        raise invalid(
            f"temperature must be non-negative, got {temperature}.", "temperature", temperature
        )
    top_p = _float(body, "top_p", 1.0)
    if top_p is not None and not 0 < top_p <= 1:
        raise invalid(f"top_p must be in (0, 1], got {top_p}.", "top_p", top_p)
    seed = _int(body, "seed", None)
    min_tokens = _int(body, "min_tokens", 0) or 0
    if min_tokens < 0:
        raise invalid(
            f"min_tokens must be greater than or equal to 0, got {min_tokens}.",
            "min_tokens",
            min_tokens,
        )
    _sampling_ranges(body)
    lp = parse_logprobs(body, chat=chat)
    stop = _stop(body)
    salt = body.get("cache_salt")
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    requested = _int(body, key, None)
    if requested is not None and requested > max_model_len:
        raise invalid(
            f"{key}={requested} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens.",
            key,
            requested,
        )
    if requested is not None and requested < 1:
        raise invalid(f"{key} must be at least 1, got {requested}.", key, requested)
    if chat:
        prompts, echo = [_messages(body, tok, server.chat)], None
        rseed = seed if seed is not None else request_seed
        tool = _tool_plan(body, rseed, server, body["messages"])
    else:
        prompts, texts = _prompts(body, tok, server.chat)
        echo = texts if body.get("echo") else None
        tool = None
    check_max(lp, server.max_logprobs, tok.vocab_size)
    rf = body.get("response_format")
    json_mode = isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")
    specs = []
    for ids in prompts:
        plen = len(ids)
        if plen >= max_model_len + (1 if plen == max_model_len else 0):
            raise invalid(
                f"This model's maximum context length is {max_model_len} tokens. However, your "
                f"prompt contains {plen} input tokens, which exceeds this limit even without any "
                "output tokens. Please reduce the length of the input prompt.",
                "input_tokens",
                plen,
            )
        room = max_model_len - plen
        if room < 1:
            raise invalid("max_tokens must be at least 1, got 0.", "max_tokens", 0)
        default = 16 if not chat else room
        max_tokens = min(requested if requested is not None else default, room)
        if min_tokens > max_tokens:
            raise invalid(
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {min_tokens}.",
                "min_tokens",
                min_tokens,
            )
        forced = None
        if tool is not None:
            forced = tool.arguments
        elif json_mode:
            schema = (rf.get("json_schema") or {}).get("schema") if isinstance(rf, dict) else None
            rng = random.Random(seed if seed is not None else plen)
            forced = (
                json.dumps(json_for_schema(schema, rng))
                if schema
                else json_object_text(max_tokens, rng, tok)
            )
        specs.append(
            SamplingSpec(
                max_tokens=max_tokens,
                min_tokens=min_tokens,
                ignore_eos=bool(body.get("ignore_eos", False)),
                stop=stop,
                include_stop_str=bool(body.get("include_stop_str_in_output", False)),
                seed=seed,
                temperature=temperature,
                forced_text=forced,
            )
        )
    return Work(
        chat=chat,
        model=served[0],
        prompts=prompts,
        n=n,
        sampling=specs,
        stream=bool(stream),
        include_usage=bool(opts and opts.get("include_usage")),
        continuous_usage=bool(opts and opts.get("continuous_usage_stats")),
        echo_prompts=echo,
        tool=tool,
        cache_salt=salt if isinstance(salt, str) else None,
        logprobs=lp,
    )
