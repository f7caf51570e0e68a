"""One request's ``n`` choices, for the per-request metrics vLLM records once per parent.

vLLM (``v1/engine/parallel_sampling.py::ParentRequest.observe_finished_request``)
observes ``vllm:request_params_n`` and ``vllm:request_max_num_generation_tokens`` when
the last of a request's ``n`` child requests finishes, the latter with the most tokens
any child generated. A request with ``n == 1`` has no parent and is observed at once.
"""

from __future__ import annotations


class ParentRequest:
    __slots__ = ("max_generation_tokens", "n", "unfinished")

    def __init__(self, n: int) -> None:
        self.n = n
        self.unfinished = n
        self.max_generation_tokens = 0

    def finish_child(self, generation_tokens: int) -> int | None:
        """A child finished; the max generation tokens once all have, else None."""
        self.unfinished -= 1
        self.max_generation_tokens = max(self.max_generation_tokens, generation_tokens)
        return self.max_generation_tokens if self.unfinished == 0 else None

    def __repr__(self) -> str:
        return f"<ParentRequest n={self.n} unfinished={self.unfinished}>"
