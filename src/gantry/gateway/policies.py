"""Each model's routing policy, the indexes cache-aware policies share, and what a
request must carry for them (its prefix chains).

``routing.policy`` is the default and ``routing.models.<model>.policy`` overrides it.
``prefix`` and ``kv_aware`` share one approximate index (which engine recently got which
prompt-text blocks); ``kv_aware`` also reads the KV-event index (which engine has which
vLLM blocks cached, fed by ``engines.kv_events``). Chains are capped at
``MAX_CHAIN_BLOCKS`` blocks (llm-d's default), so a very long prompt costs no more than
that to match. One policy object per policy name is shared by the models that use it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gantry.config import RoutingConfig
from gantry.engines.tokens import PromptTokens, prompt_text
from gantry.engines.transport import EngineTransport
from gantry.protocol import BlockHasher, salt_keys
from gantry.routing import BlockIndex, Policy, RouteRequest, make_policy, text_chain

MAX_CHAIN_BLOCKS = 256
# kv_aware's token chains go further: a conversation's history is long, and the prefill
# scorer needs the cached part of the whole prompt, not of its first 4,096 tokens
MAX_KV_CHAIN_BLOCKS = 2048
CHAINED = frozenset({"prefix", "kv_aware"})


class Policies:
    def __init__(self, cfg: RoutingConfig, degraded: Callable[[str], bool]) -> None:
        self.degraded = degraded
        self.prefix = BlockIndex(cfg.prefix.max_blocks_per_engine)
        self.kv = BlockIndex(cfg.kv_aware.max_blocks_per_engine)
        self.hasher = BlockHasher(cfg.kv_aware.block_size)
        self.tokens = PromptTokens(
            tokenizer_path=cfg.kv_aware.tokenizer, cache=cfg.kv_aware.tokenize_cache
        )
        self._by_name: dict[str, Policy] = {}
        self._by_model: dict[str, tuple[str, Policy]] = {}
        self.reconfigure(cfg)

    def reconfigure(self, cfg: RoutingConfig) -> None:
        """New policies and knobs; the indexes (and what they learnt) stay."""
        self.cfg = cfg
        self._by_name.clear()
        self._by_model.clear()

    def for_model(self, model: str) -> tuple[str, Policy]:
        found = self._by_model.get(model)
        if found is None:
            name = self.cfg.policy_for(model)
            policy = self._by_name.get(name)
            if policy is None:
                policy = self._by_name[name] = self._build(name)
            if len(self._by_model) >= 4096:  # bounded: models seen
                self._by_model.clear()
            found = self._by_model[model] = (name, policy)
        return found

    def _build(self, name: str) -> Policy:
        c = self.cfg
        params: dict[str, Any] = {}
        if name == "prefix":
            p = c.prefix
            params = dict(
                cache_threshold=p.cache_threshold,
                balance_abs=p.balance_abs,
                balance_rel=p.balance_rel,
            )
        elif name == "kv_aware":
            w = c.kv_aware.weights
            params = dict(
                weights=(w.prefix, w.queue, w.kv),
                prefill_weight=w.prefill,
                block_size=c.kv_aware.block_size,
            )
        return make_policy(
            name,
            load_factor=c.affinity_load_factor,
            prefix_index=self.prefix,
            kv_index=self.kv,
            degraded=self.degraded,
            **params,
        )

    def wants_chains(self, model: str) -> bool:
        return self.for_model(model)[0] in CHAINED

    async def fill_chains(
        self,
        route: RouteRequest,
        body: dict[str, Any],
        engine: EngineTransport | None,
    ) -> None:
        """Put the request's prefix chains on ``route`` (for prefix and kv_aware)."""
        name = self.for_model(route.model)[0]
        salt = body.get("cache_salt")
        salt = salt if isinstance(salt, str) else ""
        text = prompt_text(body)
        if text is not None:
            p = self.cfg.prefix
            limit = p.block_chars * MAX_CHAIN_BLOCKS
            route.prefix_chain = text_chain(text[:limit], p.block_chars, f"{route.model}\0{salt}")
            # ~4 characters a token until the engine's tokens say exactly (below)
            route.prompt_tokens = len(text) // 4 or None
        if name != "kv_aware":
            return
        if self._unseen(route) and not self.tokens.local:
            # Nobody was sent this prompt's first block (the approximate index records
            # every decision): its tokens would not change the choice, so spare the
            # engine round trip. With several gateways, a prefix another one routed is
            # scored here as unknown once; this gateway records it then.
            return
        ids = await self.tokens.of(body, route.model, engine)
        if ids:
            size = self.cfg.kv_aware.block_size
            extra = salt_keys(salt)
            route.kv_chain = self.hasher.hashes(ids[: size * MAX_KV_CHAIN_BLOCKS], extra)
            route.prompt_tokens = len(ids)

    def _unseen(self, route: RouteRequest) -> bool:
        chain = route.prefix_chain
        return bool(chain) and not any(self.prefix.match(chain[:1]).values())  # type: ignore[index]

    def forget(self, engine: str) -> None:
        """An engine left: what the indexes knew of it goes too."""
        self.prefix.clear(engine)
        self.kv.clear(engine)
