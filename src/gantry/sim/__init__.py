"""A GPU-free engine that speaks vLLM's API and behaves like vLLM under load.

Depends only on ``gantry.protocol`` so it can be used on its own.
"""

from gantry.sim.core import EngineConfig, EngineCore
from gantry.sim.engine import SimEngine
from gantry.sim.faults import FaultConfig
from gantry.sim.kvcache import KVCache
from gantry.sim.latency import LatencyModel, LatencyParams, StepShape
from gantry.sim.profiles import GPUS, MODELS, gpu_profile, model_from_config, model_profile
from gantry.sim.scheduler import Scheduler, SchedulerConfig
from gantry.sim.server import SimServer
from gantry.sim.settings import SimConfigError, SimSettings
from gantry.sim.tokenizer import BuiltinTokenizer, load_tokenizer
from gantry.sim.virtual import Arrival, VirtualEngine, VirtualResult

__all__ = [
    "GPUS",
    "MODELS",
    "Arrival",
    "BuiltinTokenizer",
    "EngineConfig",
    "EngineCore",
    "FaultConfig",
    "KVCache",
    "LatencyModel",
    "LatencyParams",
    "Scheduler",
    "SchedulerConfig",
    "SimConfigError",
    "SimEngine",
    "SimServer",
    "SimSettings",
    "StepShape",
    "VirtualEngine",
    "VirtualResult",
    "gpu_profile",
    "load_tokenizer",
    "model_from_config",
    "model_profile",
]
