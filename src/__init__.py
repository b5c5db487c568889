"""gptforge: config-driven pretraining of GPT-style language models."""

from gptforge.errors import CheckpointError, ConfigError, DataError, GptforgeError, LaunchError

__all__ = ["CheckpointError", "ConfigError", "DataError", "GptforgeError", "LaunchError"]
__version__ = "0.1.0"
