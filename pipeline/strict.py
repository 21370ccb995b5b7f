"""The pydantic base of every spec model, and the error that points below a model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Unknown fields are errors: a typo such as `stpes: 2` must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class FieldError(ValueError):
    """Raised by model-level validators to point at a field below the model being validated."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
