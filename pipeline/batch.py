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

import time

import numpy as np

ID = "id"
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
LORA = "lora"  # the adapter a row picks by name ("": the stage's whole set)
IMAGE = "image"
WIDTH = "image_width"
HEIGHT = "image_height"
# The input image's own size, which stages never change (0 without an input image): a
# mask drawn on the input still fits after an earlier stage of the chain resized it.
SOURCE_WIDTH = "source_width"
SOURCE_HEIGHT = "source_height"
MASK = "mask"
# A ControlNet's conditioning image, decoded RGB (as IMAGE), and its size (0: none).
CONTROL = "control_image"
CONTROL_WIDTH = "control_width"
CONTROL_HEIGHT = "control_height"
MASK_WIDTH = "mask_width"
MASK_HEIGHT = "mask_height"
SEED = "seed"
PREPARE_SECONDS = "prepare_seconds"
# When the last step let go of the chunk (wall clock, time.time()), and each row's share of
# the time its chunk has waited in Ray Data's queues since prepare: a step that receives
# the chunk adds now - HANDOFF_AT. Clocks of different nodes may differ by milliseconds.
HANDOFF_AT = "handoff_at"
QUEUE_SECONDS = "queue_seconds"
# True for a row an earlier run committed, in a chunk that runs again for its other rows:
# it is generated as their batch mate, and never written.
COMMITTED = "committed"
STATUS = "status"
ERROR = "error"
# The number of the input shard a row belongs to (pipeline/io/shards.py): its commit names it.
SHARD = "shard"
OK, FAILED = "ok", "failed"


def queued(batch: dict[str, np.ndarray]) -> np.ndarray:
    """QUEUE_SECONDS including the wait that ends now (zeros for a batch from outside Ray Data)."""
    count = len(batch[ID])
    if HANDOFF_AT not in batch or not count:
        return np.zeros(count)
    # Per row: a batch may join rows from blocks that were handed off at different times.
    waited = np.maximum(0.0, time.time() - batch[HANDOFF_AT].astype(np.float64))
    return batch.get(QUEUE_SECONDS, np.zeros(count)) + waited / count


def handed_off(count: int) -> np.ndarray:
    return np.full(count, time.time())


def override_column(param: str) -> str:
    """A row's override of a generation parameter (pipeline/params.py), applied by the first
    stage that takes it. float64 with NaN for "not set" keeps the column type fixed."""
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
