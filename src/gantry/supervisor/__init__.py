"""Engines on GPUs: detect GPUs, derive vLLM arguments, launch and keep engines alive."""

__all__: list[str] = []
