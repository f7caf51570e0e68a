"""gantry.client's pure parts: retry policy, Retry-After, mode choice, the context check,
chunking, the error mapping, statistics reservoirs, GPU memory helpers."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from gantry.client import (
    BadRequestError,
    ClientSDKError,
    ConnectionLost,
    ContextOverflowError,
    GpuMemoryError,
    GpuMonitor,
    ModeUnavailableError,
    NotFoundError,
    Probe,
    RateLimitError,
    RetryableError,
    RetryPolicy,
    ServerError,
    UnavailableError,
    check_fit,
    choose_mode,
    chunk_text,
)
from gantry.client._errors import error_for_status
from gantry.client._retry import parse_retry_after
from gantry.client._stats import ClientStats, Reservoir
from gantry.client._tokens import HeuristicCounter
from gantry.supervisor import RecordedGpus

GiB = 1024**3


# -- retries -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("error", "attempt", "retried"),
    [
        (RateLimitError("slow down"), 1, True),
        (UnavailableError("busy"), 3, True),
        (ConnectionLost("reset"), 1, True),
        (UnavailableError("busy"), 4, False),  # max_attempts reached
        (BadRequestError("bad"), 1, False),
        (ServerError("boom", status=500), 1, False),
        (RateLimitError("later", retry_after=120), 1, False),  # longer than max_wait_s
    ],
)
def test_retry_decision(error: ClientSDKError, attempt: int, retried: bool) -> None:
    delay = RetryPolicy(max_attempts=4).delay(attempt, error, random.Random(0))
    assert (delay is not None) is retried


def test_retry_after_is_honoured_with_bounded_jitter() -> None:
    policy = RetryPolicy(base_s=0.5)
    rng = random.Random(1)
    waits = [policy.delay(1, RateLimitError("x", retry_after=3.0), rng) for _ in range(200)]
    assert all(w is not None and 3.0 <= w <= 3.3 for w in waits)
    assert len({round(w, 6) for w in waits if w is not None}) > 100  # jittered, not fixed


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=20, base_s=0.1, cap_s=1.0)
    rng = random.Random(2)
    for attempt in range(1, 20):
        bound = min(1.0, 0.1 * 2 ** (attempt - 1))
        waits = [policy.delay(attempt, ConnectionLost("x"), rng) for _ in range(50)]
        assert all(w is not None and 0 <= w <= bound for w in waits)


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (429, RateLimitError, True),
        (503, UnavailableError, True),
        (400, BadRequestError, False),
        (404, NotFoundError, False),
        (422, BadRequestError, False),
        (500, ServerError, False),
        (502, ServerError, False),
    ],
)
def test_error_for_status(status: int, cls: type, retryable: bool) -> None:
    err = error_for_status(status, "msg", 2.0)
    assert type(err) is cls
    assert err.status == status
    assert isinstance(err, RetryableError) is retryable
    assert err.retryable is retryable


# -- mode choice -------------------------------------------------------------------------
NO_VLLM = Probe(False, "vllm is not installed", 0, "not probed")
NO_GPU = Probe(True, "vllm is installed", 0, "NVML found no GPU")
GPU = Probe(True, "vllm is installed", 2, "2 GPU(s)")


@pytest.mark.parametrize(
    ("requested", "url", "model", "probe", "mode", "why"),
    [
        ("auto", None, "m", GPU, "vllm", "2 GPU(s) found"),
        ("auto", "http://x", "m", GPU, "vllm", "vLLM is installed"),
        ("auto", "http://x", "m", NO_VLLM, "http", "vllm is not installed"),
        ("auto", "http://x", "m", NO_GPU, "http", "NVML found no GPU"),
        ("auto", None, None, GPU, "sim", "no model named"),
        ("auto", None, "m", NO_VLLM, "sim", "no URL given"),
        ("http", "http://x", "m", GPU, "http", "as asked"),
        ("sim", "http://x", "m", GPU, "sim", "as asked"),
    ],
)
def test_choose_mode(requested, url, model, probe, mode, why) -> None:
    choice = choose_mode(requested, url=url, model=model, probe=probe)
    assert choice.mode == mode
    assert why in choice.reason


def test_choose_mode_refuses_what_cannot_run() -> None:
    with pytest.raises(ModeUnavailableError, match="vllm is not installed"):
        choose_mode("vllm", url=None, model="m", probe=NO_VLLM)
    with pytest.raises(ModeUnavailableError, match="url"):
        choose_mode("http", url=None, model="m", probe=GPU)


# -- context check and chunking ------------------------------------------------------------
def test_context_overflow_names_the_numbers() -> None:
    assert check_fit(1000, 500, 2048) == 1048
    with pytest.raises(ContextOverflowError) as info:
        check_fit(2000, 100, 2048)
    err = info.value
    assert (err.prompt_tokens, err.max_tokens, err.context_length) == (2000, 100, 2048)
    assert err.excess_tokens == 52
    for number in ("2000", "100", "2048", "52"):
        assert number in str(err)
    with pytest.raises(ContextOverflowError):
        check_fit(2048, None, 2048)  # not even one token of room


def test_heuristic_counter() -> None:
    c = HeuristicCounter()
    assert c.count("hello world") == 2
    assert c.count("extraordinary") == 2  # 7 letters a piece
    assert c.count("12345") == 2
    assert c.count("a, b.") == 4
    assert c.count("") == 0
    msgs = [{"role": "user", "content": "hello world"}]
    assert c.count_messages(msgs) == 3 + 4 + 2


@pytest.mark.parametrize(("size", "overlap"), [(10, 0), (10, 3), (7, 6), (1, 0), (500, 50)])
def test_chunks_by_tokens_with_overlap(size: int, overlap: int) -> None:
    counter = HeuristicCounter()
    text = " ".join(f"word{i} is here, and 12345 more." for i in range(60))
    chunks = chunk_text(text, size, overlap, counter)
    assert all(counter.count(c) <= size for c in chunks)
    # each chunk repeats the last `overlap` tokens of the one before; dropping them
    # puts the text back together
    rebuilt = chunks[0]
    for prev, cur in itertools.pairwise(chunks):
        tail = "".join(prev[a:b] for a, b in counter.spans(prev)[-overlap:]) if overlap else ""
        assert cur.startswith(tail)
        rebuilt += cur[len(tail) :]
    assert rebuilt == text


def test_chunking_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        chunk_text("abc", 4, 4)
    assert chunk_text("", 4) == []


# -- statistics --------------------------------------------------------------------------
def test_reservoir_is_bounded_and_percentiles_exact_until_full() -> None:
    r = Reservoir(size=100)
    for v in range(1, 101):
        r.add(float(v))
    assert (r.percentile(50), r.percentile(99), r.percentile(100)) == (50.0, 99.0, 100.0)
    for v in range(100_000):
        r.add(float(v))
    assert len(r.values) == 100 and r.count == 100_100


def test_stats_count_errors_by_kind() -> None:
    s = ClientStats()
    for _ in range(3):
        s.started()
    s.finished(0.5, 10, 4)
    s.failed_with("RateLimitError")
    s.failed_with("RateLimitError")
    s.retried()
    snap = s.snapshot()
    assert (snap.requests, snap.succeeded, snap.failed, snap.retries) == (3, 1, 2, 1)
    assert snap.errors == {"RateLimitError": 2}
    assert (snap.prompt_tokens, snap.completion_tokens) == (10, 4)
    assert snap.e2e_s.p50 == 0.5 and snap.ttft_s.p50 is None


# -- GPU memory ----------------------------------------------------------------------------
def _gpus(*used_gib: float) -> RecordedGpus:
    return RecordedGpus(
        {
            "gpus": [
                {
                    "index": 0,
                    "name": "NVIDIA L4",
                    "memory_total": 24 * GiB,
                    "compute_capability": [8, 9],
                    "samples": [{"memory_used": int(u * GiB)} for u in used_gib],
                }
            ]
        }
    )


def test_gpu_stats_and_free_memory() -> None:
    mon = GpuMonitor(_gpus(18.0))
    (g,) = mon.stats()
    assert g.free == 6 * GiB and g.utilization == pytest.approx(0.75)
    assert mon.has_free(5.0) and not mon.has_free(7.0)
    assert mon.count() == (1, "1 GPU(s)")


async def test_wait_for_free_gpu_memory() -> None:
    mon = GpuMonitor(_gpus(22.0, 20.0, 10.0))  # memory frees up sample by sample
    (g,) = await mon.wait_for_free(8.0, timeout_s=30, interval_s=0)
    assert g.free == 14 * GiB
    stuck = GpuMonitor(_gpus(23.0))
    with pytest.raises(GpuMemoryError, match=r"GPU 0 has 1\.0 GiB free"):
        await stuck.wait_for_free(8.0, timeout_s=0, interval_s=0)
