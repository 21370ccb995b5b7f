"""The columns that flow between the pipeline's steps, and how images travel in them.

Images travel as raw uint8 pixels (RGB for images, L for masks) in a binary column with
their width and height beside it: no encode/decode between stages, zero-copy views on the
way in, and Arrow handles rows of different sizes without ragged-tensor types.

A row whose `status` is "failed" is carried through untouched by later stages, so one bad
row never costs the rest of its batch.

Text columns never hold None: "" means "not set". Ray Data turns an all-null column into
floats (NaN) in numpy batches, which would reach the tokenizer as a non-string.
"""

from __future__ import annotations

import numpy as np

ID = "id"
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
IMAGE = "image"
WIDTH = "image_width"
HEIGHT = "image_height"
MASK = "mask"
MASK_WIDTH = "mask_width"
MASK_HEIGHT = "mask_height"
SEED = "seed"
PREPARE_SECONDS = "prepare_seconds"
STATUS = "status"
ERROR = "error"
OK, FAILED = "ok", "failed"

# Per-row overrides read from the input table, each applied by the first stage that takes
# the parameter. float64 with NaN for "not set" keeps the column type fixed.
OVERRIDES = ("steps", "guidance_scale", "strength", "width", "height")


def override_column(param: str) -> str:
    return f"row_{param}"


def stage_column(index: int, field: str) -> str:
    """Per-stage record columns (seed, parameters, timing, device) for the metadata."""
    return f"s{index}_{field}"


def image_view(raw: bytes, width: int, height: int, channels: int = 3) -> np.ndarray:
    """A read-only (H, W, C) view of raw pixel bytes, without a copy."""
    shape = (int(height), int(width), channels) if channels > 1 else (int(height), int(width))
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def object_column(values: list) -> np.ndarray:
    """A 1-D object array (np.array would try to stack equal-length bytes or lists)."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column
