"""The exceptions gptforge raises for problems a user can fix: the CLI prints them as one line."""


class GptforgeError(Exception):
    """Base of every user-facing error; the message names the culprit and what would be valid."""


class ConfigError(GptforgeError):
    """A config key or value is invalid."""


class DataError(GptforgeError):
    """A data file, path or tokenizer does not fit what the config asks for."""


class CheckpointError(GptforgeError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model."""


class LaunchError(GptforgeError):
    """The process layout (ranks, devices, backend) cannot run as configured."""
