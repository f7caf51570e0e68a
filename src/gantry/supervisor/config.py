"""What to launch (the models live in ``gantry.config``, beside the gateway's settings
that embed them as ``engines: launch:``)."""

from gantry.config import LaunchSpec, OomSettings, RestartSettings, WarmupSettings

__all__ = ["LaunchSpec", "OomSettings", "RestartSettings", "WarmupSettings"]
