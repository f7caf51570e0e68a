"""Routing decision cost per request, per policy, with a warm prefix/KV index.

    python benchmarks/routing_decision.py

* 8 engines; each index holds 100k blocks (12,500 per engine); requests carry ~2,000-
  token prompts (125 blocks of 16 tokens; 125 blocks of 64 characters for the text
  chain) made of one of 64 shared 1,500-token prefixes plus a 500-token unique tail;
* per policy, with the gateway's default weights: the decision (``policy(req,
  candidates, inflight)``, including the index match) and the records after it
  (``chosen``, and ``started`` at the first token), in microseconds, chains precomputed;
* hashing a prompt, which the decision excludes: ``BlockHasher`` cold (nothing
  memoised), warm (shared prefix memoised, new tail) and hot (whole prompt memoised),
  against plain ``block_hashes``; ``text_chain`` of the prompt text;
* ``BlockIndex.memory_bytes()`` at 100k and 1M blocks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from gantry.config import KVWeights
from gantry.protocol import BlockHasher, block_hashes
from gantry.routing import (
    BlockIndex,
    EngineView,
    KVAware,
    Policy,
    PowerOfTwo,
    PrefixAware,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    StickyLeastLoaded,
    least_loaded,
    record_choice,
    record_started,
    text_chain,
)

_w = KVWeights()
W, PREFILL = (_w.prefix, _w.queue, _w.kv), _w.prefill  # the gateway's defaults

ENGINES = 8
BLOCKS = 100_000
PREFIX_BLOCKS, TAIL_BLOCKS = 94, 31  # ~1,500 + ~500 tokens
GROUPS = 64


def random_chain(rng: random.Random, n: int) -> list[int]:
    return [rng.getrandbits(64) for _ in range(n)]


def fill(idx: BlockIndex, prefixes: list[list[int]], total: int, rng: random.Random) -> None:
    """Each group's prefix lives on one or two engines; unique tails fill up the rest."""
    for g, prefix in enumerate(prefixes):
        idx.add(f"e{g % ENGINES}", prefix)
        if g % 3 == 0:
            idx.add(f"e{(g + 1) % ENGINES}", prefix)
    while idx.blocks() < total:
        g = rng.randrange(GROUPS)
        idx.add(f"e{rng.randrange(ENGINES)}", prefixes[g] + random_chain(rng, TAIL_BLOCKS))


def requests(rng: random.Random, kv: list[list[int]], text: list[list[int]], n: int):
    out = []
    for i in range(n):
        g = rng.randrange(GROUPS)
        out.append(
            RouteRequest(
                "m",
                session=f"s{rng.randrange(10_000)}",
                prefix_chain=text[g] + random_chain(rng, TAIL_BLOCKS),
                kv_chain=kv[g] + random_chain(rng, TAIL_BLOCKS),
                key=f"k{i % 50}",
                prompt_tokens=(PREFIX_BLOCKS + TAIL_BLOCKS) * 16,
            )
        )
    return out


def views(rng: random.Random) -> list[EngineView]:
    return [
        EngineView(
            f"e{i}",
            f"http://e{i}",
            ("m",),
            True,
            running=rng.randrange(20),
            waiting=rng.randrange(4),
            kv_usage=rng.random(),
        )
        for i in range(ENGINES)
    ]


def per_request(
    policy: Policy, reqs: list[RouteRequest], es: list[EngineView]
) -> tuple[float, float]:
    """(decide, record) in microseconds a request."""
    inflight = {e.name: i % 3 for i, e in enumerate(es)}
    names: list[str] = []
    t0 = time.perf_counter()
    for r in reqs:
        names.append(policy(r, es, inflight).name)
    decide = (time.perf_counter() - t0) / len(reqs)
    t0 = time.perf_counter()
    for r, name in zip(reqs, names, strict=True):
        record_choice(policy, r, name)
        record_started(policy, r, name)
    record = (time.perf_counter() - t0) / len(reqs)
    return decide * 1e6, record * 1e6


def timed(fn: Callable[[], object], n: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``n`` calls, in microseconds a call."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def hashing(rng: random.Random) -> None:
    system = [rng.randrange(128_000) for _ in range(1504)]  # 94 blocks
    prompts = [system + [rng.randrange(128_000) for _ in range(496)] for _ in range(200)]
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(4)) for _ in range(4096)
    ]
    texts = ["".join(words[t % 4096] for t in p) for p in prompts]  # ~4 characters a token
    n = len(prompts)
    plain = timed(lambda: block_hashes(prompts[0], 16), n)
    cold = timed(lambda: BlockHasher().hashes(prompts[0]), n)

    def warm_run() -> None:  # a fresh memo: the first prompt misses, the rest share 94
        hasher = BlockHasher()
        for p in prompts:
            hasher.hashes(p)

    warm = timed(warm_run, 1) / n
    hasher = BlockHasher()
    hasher.hashes(prompts[-1])
    hot = timed(lambda: hasher.hashes(prompts[-1]), n)
    ti = iter(texts * 3)
    text = timed(lambda: text_chain(next(ti)), n)
    print("hashing one 2,000-token prompt (125 blocks; excluded from the decision)")
    print(
        f"  block_hashes (sha256 of pickle)          {plain:7.1f} us  ({plain / 125:.2f} us/block)"
    )
    print(f"  BlockHasher cold (nothing memoised)      {cold:7.1f} us  ({cold / plain:.2f}x)")
    print(f"  BlockHasher warm (94-block prefix known) {warm:7.1f} us  ({warm / plain:.2f}x)")
    print(f"  BlockHasher hot (whole prompt known)     {hot:7.1f} us  ({hot / plain:.2f}x)")
    print(f"  text_chain of its ~8,000 characters      {text:7.1f} us  ({text / 125:.2f} us/block)")


def memory() -> None:
    rng = random.Random(3)
    print("BlockIndex.memory_bytes(), 8 engines")
    for total in (100_000, 1_000_000):
        idx = BlockIndex(total // ENGINES)
        prefixes = [random_chain(rng, PREFIX_BLOCKS) for _ in range(GROUPS)]
        fill(idx, prefixes, total, rng)
        mb = idx.memory_bytes()
        print(
            f"  {idx.blocks():>9,} blocks ({len(idx):,} distinct): {mb / 2**20:6.1f} MiB"
            f"  ({mb / idx.blocks():.0f} bytes a block)"
        )


def main() -> None:
    rng = random.Random(1)
    kv_prefixes = [random_chain(rng, PREFIX_BLOCKS) for _ in range(GROUPS)]
    text_prefixes = [random_chain(rng, PREFIX_BLOCKS) for _ in range(GROUPS)]

    def indexes() -> tuple[BlockIndex, BlockIndex]:
        kv, approx = BlockIndex(BLOCKS // ENGINES), BlockIndex(BLOCKS // ENGINES)
        fill(kv, kv_prefixes, BLOCKS, random.Random(2))
        fill(approx, text_prefixes, BLOCKS, random.Random(2))
        return kv, approx

    reqs = requests(rng, kv_prefixes, text_prefixes, 5_000)
    es = views(rng)
    kv = indexes()[0]
    print(
        f"routing decision per request: {ENGINES} engines, {kv.blocks():,} blocks per index,"
        f" chains of {len(reqs[0].kv_chain or ())} blocks, {len(reqs):,} requests"
    )
    match = timed(lambda: kv.match(reqs[0].kv_chain or ()), 5_000)
    print(f"  BlockIndex.match alone (94-block hit)    {match:7.1f} us")
    policies: list[tuple[str, Callable[[], Policy]]] = [
        ("least_loaded", lambda: least_loaded),
        ("round_robin", RoundRobin),
        ("session_affinity", SessionAffinity),
        ("power_of_two", lambda: PowerOfTwo(random.Random(4))),
        ("sticky_least_loaded", StickyLeastLoaded),
        ("prefix", lambda: PrefixAware(indexes()[1])),
        ("kv_aware", lambda: KVAware(*indexes(), weights=W, prefill_weight=PREFILL)),
        (
            "kv_aware, 2 engines degraded",
            lambda: KVAware(
                *indexes(), weights=W, prefill_weight=PREFILL, degraded={"e0", "e5"}.__contains__
            ),
        ),
    ]
    print(f"  {'policy':<30} {'decide':>8} {'record':>8}")
    for name, build in policies:
        runs = []
        for _ in range(3):  # best of three, each on fresh state
            policy = build()
            per_request(policy, reqs[:500], es)  # warm-up
            runs.append(per_request(policy, reqs, es))
        decide, record = min(d for d, _ in runs), min(r for _, r in runs)
        print(f"  {name:<30} {decide:6.1f} us {record:6.1f} us")
    print()
    hashing(rng)
    print()
    memory()


if __name__ == "__main__":
    main()
