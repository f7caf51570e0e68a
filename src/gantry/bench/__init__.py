"""`gantry bench`: load tests against any OpenAI-compatible endpoint, with
`vllm bench serve`'s metric definitions and result keys."""

from gantry.bench.arrivals import Schedule, send_times
from gantry.bench.chaos import Tally, steady_load
from gantry.bench.datasets import (
    DatasetError,
    Job,
    Turn,
    jsonl_jobs,
    multi_turn_jobs,
    random_jobs,
    shared_prefix_jobs,
    sharegpt_jobs,
)
from gantry.bench.slo import SLOError, parse_slo
from gantry.bench.stats import RequestResult, percentile, summarize

__all__ = [
    "DatasetError",
    "Job",
    "RequestResult",
    "SLOError",
    "Schedule",
    "Tally",
    "Turn",
    "jsonl_jobs",
    "multi_turn_jobs",
    "parse_slo",
    "percentile",
    "random_jobs",
    "send_times",
    "shared_prefix_jobs",
    "sharegpt_jobs",
    "steady_load",
    "summarize",
]
