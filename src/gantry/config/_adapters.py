"""LoRA adapters the gateway may load on engines (``adapters:`` in the config file)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class AdaptersConfig(BaseModel):
    """``models`` maps a base model to its adapters (name -> path, as vLLM's
    ``lora_path``). With ``on_demand``, a request for a registered adapter that no
    healthy engine has loaded loads it on the least-loaded engine serving its base."""

    model_config = _FROZEN
    on_demand: bool = False
    models: dict[str, dict[str, str]] = Field(default_factory=dict)
    load_timeout_s: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _unique(self) -> AdaptersConfig:
        seen: dict[str, str] = {}
        for base, adapters in self.models.items():
            for name, path in adapters.items():
                if not name or not path:
                    raise ValueError(f"adapters.models.{base}: names and paths must be set")
                if name in seen or name in self.models:
                    raise ValueError(f"adapter {name!r} is registered twice")
                seen[name] = base
        return self

    def lookup(self, name: str) -> tuple[str, str] | None:
        """``(base model, path)`` of a registered adapter, or None."""
        for base, adapters in self.models.items():
            if name in adapters:
                return base, adapters[name]
        return None
