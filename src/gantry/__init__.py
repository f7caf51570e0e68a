"""gantry: a production serving stack for vLLM."""

__version__ = "0.1.0"

__all__ = ["__version__"]
