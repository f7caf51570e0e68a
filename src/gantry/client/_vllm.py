"""In-process mode on vLLM's own engine (``vllm.v1.engine.async_llm.AsyncLLM``).

Imported only when this mode is chosen (vLLM and a GPU present). Concurrent requests
go to one ``AsyncLLM``, whose scheduler batches them: native batching. Chat prompts are
rendered with the model's own chat template (tools passed to it); JSON mode and forced
tool calls use vLLM's structured outputs. A model whose chat template emits tool calls
as text under ``tool_choice="auto"`` gets that text back as content: no tool-call parser
runs in process.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gantry.client._errors import (
    BadRequestError,
    ModeUnavailableError,
    ServerError,
    UnsupportedError,
)
from gantry.client._tokens import TokenCounter
from gantry.client._types import (
    Choice,
    Chunk,
    Completion,
    Embedding,
    Request,
    ToolCall,
    Usage,
)


def vllm_available() -> tuple[bool, str]:
    """Whether vLLM can run here, and why not (without importing vLLM itself)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not installed"
    return True, "vllm is installed"


class _HFCounter:
    """Counts with the engine's (transformers) tokenizer and chat template."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.name = f"engine:{getattr(tokenizer, 'name_or_path', 'tokenizer')}"

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False))

    def count_messages(self, messages: Sequence[dict[str, Any]]) -> int:
        return len(self._tok.apply_chat_template(list(messages), add_generation_prompt=True))

    def spans(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(o) for o in enc["offset_mapping"]]


class VllmBackend:
    mode = "vllm"

    def __init__(self, model: str, engine_args: dict[str, Any] | None = None) -> None:
        self.model = model
        self._args = dict(engine_args or {})
        self._engine: Any = None
        self._tokenizer: Any = None
        self.batch_concurrency = int(self._args.get("max_num_seqs", 256))

    async def start(self) -> None:
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise ModeUnavailableError(f"vLLM cannot be imported: {exc}") from None
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(model=self.model, **self._args))
        self._tokenizer = await self._engine.get_tokenizer()

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    # -- requests -----------------------------------------------------------------
    def _prompt(self, req: Request) -> str | list[int]:
        b = req.body
        if not req.chat:
            prompt = b.get("prompt")
            if isinstance(prompt, str) or (
                isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)
            ):
                return prompt
            raise BadRequestError("in-process mode takes one prompt (a string or token ids)")
        text: str = self._tokenizer.apply_chat_template(
            b["messages"], tools=b.get("tools"), tokenize=False, add_generation_prompt=True
        )
        return text

    def _forced_tool(self, req: Request) -> dict[str, Any] | None:
        choice, tools = req.body.get("tool_choice"), req.body.get("tools") or []
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return next((t["function"] for t in tools if t["function"]["name"] == name), None)
        if choice == "required" and tools:
            return tools[0]["function"]
        return None

    def _params(self, req: Request, kind: str) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        b = req.body
        schema: Any = None
        tool = self._forced_tool(req) if req.chat else None
        rf = b.get("response_format") or {}
        if tool is not None:
            schema = tool.get("parameters") or {"type": "object"}
        elif rf.get("type") == "json_schema":
            schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
        elif rf.get("type") == "json_object":
            schema = {"type": "object"}
        extra: dict[str, Any] = {}
        if schema is not None:
            extra.update(_structured(schema))
        return SamplingParams(
            n=int(b.get("n", 1)),
            max_tokens=b.get("max_tokens"),
            temperature=float(b.get("temperature", 1.0)),
            top_p=float(b.get("top_p", 1.0)),
            seed=b.get("seed"),
            stop=b.get("stop"),
            output_kind=getattr(RequestOutputKind, kind),
            **extra,
        )

    async def complete(self, req: Request, idempotency_key: str) -> Completion:
        rid = f"gantry-{uuid.uuid4().hex}"
        final: Any = None
        try:
            async for out in self._engine.generate(
                self._prompt(req), self._params(req, "FINAL_ONLY"), rid
            ):
                final = out
        except ValueError as exc:  # vLLM's validation (too long, bad params)
            raise BadRequestError(str(exc)) from None
        if final is None:
            raise ServerError("vLLM returned no output")
        tool = self._forced_tool(req) if req.chat else None
        choices = tuple(
            Choice(
                o.index,
                "" if tool else o.text,
                "tool_calls" if tool and o.finish_reason == "stop" else o.finish_reason,
                (ToolCall(f"call-{rid}-{o.index}", tool["name"], o.text),) if tool else (),
            )
            for o in final.outputs
        )
        usage = Usage(
            len(final.prompt_token_ids or ()), sum(len(o.token_ids) for o in final.outputs)
        )
        raw = {"id": rid, "created": int(time.time()), "model": self.model}
        return Completion(rid, self.model, choices, usage, raw)

    async def stream(self, req: Request, idempotency_key: str) -> AsyncIterator[Chunk]:
        rid = f"gantry-{uuid.uuid4().hex}"
        tool = self._forced_tool(req) if req.chat else None
        prompt_tokens, generated, named = 0, 0, set()
        try:
            async for out in self._engine.generate(
                self._prompt(req), self._params(req, "DELTA"), rid
            ):
                prompt_tokens = len(out.prompt_token_ids or ())
                for o in out.outputs:
                    generated += len(o.token_ids)
                    name = tool["name"] if tool and o.index not in named else None
                    named.add(o.index)
                    yield Chunk(o.index, o.text, o.finish_reason, name)
        except ValueError as exc:
            raise BadRequestError(str(exc)) from None
        finally:
            await self._engine.abort(rid)
        yield Chunk(usage=Usage(prompt_tokens, generated))

    async def embed(self, model: str, inputs: Sequence[str]) -> list[Embedding]:
        try:
            from vllm import PoolingParams
        except ImportError as exc:
            raise UnsupportedError(f"this vLLM has no pooling API: {exc}") from None
        out = []
        for i, text in enumerate(inputs):
            try:
                async for res in self._engine.encode(
                    text, PoolingParams(), f"gantry-emb-{uuid.uuid4().hex}"
                ):
                    vec = res.outputs.data
                out.append(Embedding(i, tuple(float(x) for x in vec.tolist())))
            except (ValueError, NotImplementedError) as exc:
                raise UnsupportedError(f"{self.model} does not serve embeddings: {exc}") from None
        return out

    async def resolve_model(self, model: str | None) -> str:
        return model or self.model

    async def context_length(self, model: str) -> int | None:
        return int(self._engine.model_config.max_model_len)

    def token_counter(self) -> TokenCounter | None:
        return _HFCounter(self._tokenizer) if self._tokenizer is not None else None


def _structured(schema: Any) -> dict[str, Any]:
    """Structured-output arguments for this vLLM (the name changed in 0.11)."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=json.dumps(schema))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}


__all__ = ["VllmBackend", "vllm_available"]
