"""The errors minibloom raises for a user's mistake or a bad file.

Every message names the thing at fault (file, tensor, key or argument), what was expected and
what was found. The CLI prints the message as one line and exits non-zero; library callers can
catch `MinibloomError` (or the builtin base each subclass also derives from).
"""


class MinibloomError(Exception):
    """Base class: a problem with the user's input, files or arguments (not a bug in minibloom)."""


class ConfigError(MinibloomError, ValueError):
    """A `config.json` or model hyper-parameter is missing, misspelt or nonsensical."""


class CheckpointError(MinibloomError, ValueError):
    """A weights file is unreadable, truncated, or has missing / unexpected / mis-shaped tensors."""


class TokenizerError(MinibloomError, ValueError):
    """A tokenizer file is invalid or describes a pipeline that is not BLOOM's."""


class PresetNotFoundError(MinibloomError, FileNotFoundError):
    """A preset name or directory could not be found on disk."""


class ArgumentError(MinibloomError, ValueError):
    """A function or CLI argument is out of range or of the wrong kind."""


class TrainingError(MinibloomError, RuntimeError):
    """A training run cannot continue (non-finite loss or gradients, unusable checkpoint)."""


def describe_error(e: BaseException) -> str:
    """The one-line cause of a failed file operation: an OSError as "reason: filename", any other
    error (e.g. a MinibloomError) as its message."""
    if isinstance(e, OSError):
        return ": ".join(str(x) for x in (e.strerror or e, e.filename) if x)
    return str(e)
