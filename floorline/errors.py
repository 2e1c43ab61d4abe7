"""User-facing error types: each carries one clear line for the CLI and the server."""


class FloorlineError(Exception):
    """Base class: the message is shown to the user as is (no traceback)."""

    exit_code = 2


class ModelNotFoundError(FloorlineError):
    """A model path, HF id or shipped config name that could not be found."""


class UnsupportedModelError(FloorlineError):
    """An architecture, tensor type or format that floorline does not support."""


class CorruptFileError(FloorlineError):
    """A weight or tokenizer file that is truncated or malformed."""


class WeightMismatchError(FloorlineError):
    """Weights that do not match the config (missing, unexpected or wrongly shaped tensors)."""


class InvalidRequestError(FloorlineError):
    """A bad request: invalid sampling values, prompt too long, and the like."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param
