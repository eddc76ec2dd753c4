"""The project's error hierarchy: every failure a user can cause or fix is one of these.

Handlers catch ``RubytailorError`` and turn it into a message for the editor; anything
else is a bug, logged with its traceback, and the server keeps serving.
"""


class RubytailorError(Exception):
    """Base class: the message is written for the user and says what to do."""


class ConfigError(RubytailorError):
    """A setting has an invalid value."""


class ModelError(RubytailorError):
    """A model directory is missing, incomplete or corrupt."""


class PrismError(RubytailorError):
    """prism.wasm is missing, fails its hash check, or cannot be run."""


class DocumentError(RubytailorError):
    """A document cannot be completed: unknown, binary, too large, or a bad position."""
