"""The per-stage record of a row: what each stage writes into the metadata's `stages` list.

One definition serves the worker (which fills the per-row columns it measures) and the
writer (which turns them into the Arrow struct), so the two cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np


@dataclass(frozen=True)
class RecordField:
    name: str
    arrow: str  # pyarrow type name: "int64", "float64", "string", "bool_"...
    # Where the value comes from:
    #   "stage": the stage's declaration (the same for every row);
    #   "row": the row's own column, else the stage's declaration (negative_prompt);
    #   "worker": a per-row column that the stage's worker fills (see stage_column).
    source: Literal["stage", "row", "worker", "index"]
    # When a row has a value: "always"; "ran" once the stage ran the row; "made" once it
    # also produced the row's image.
    when: Literal["always", "ran", "made"] = "always"

    def empty(self, count: int) -> np.ndarray:
        """The worker's column before any row ran: zeros, NaN or empty text."""
        if self.arrow == "string":
            column = np.empty(count, dtype=object)
            column[:] = ""
            return column
        if self.arrow == "float64":
            return np.full(count, np.nan)
        return np.zeros(count, dtype=bool if self.arrow == "bool_" else np.int64)

    def python(self, value: Any) -> Any:
        """A numpy cell as the Python value its Arrow type takes (None for NaN)."""
        if value is None or (isinstance(value, float) and value != value):
            return None
        return {"string": str, "float64": float, "bool_": bool}.get(self.arrow, int)(value)


STAGE_RECORD: tuple[RecordField, ...] = (
    RecordField("index", "int32", "index"),
    RecordField("kind", "string", "stage"),
    RecordField("model", "string", "stage"),
    RecordField("model_revision", "string", "worker"),
    RecordField("family", "string", "worker"),
    RecordField("scheduler", "string", "stage"),
    RecordField("dtype", "string", "stage"),
    RecordField("negative_prompt", "string", "row", "ran"),
    RecordField("seed", "int64", "worker", "ran"),
    RecordField("steps", "int32", "worker", "ran"),
    RecordField("guidance_scale", "float64", "worker", "ran"),
    RecordField("strength", "float64", "worker", "ran"),
    RecordField("noise_level", "int32", "stage"),
    # The pipeline call's settings as JSON (every argument but the rows' prompts, images and
    # generators), after the family's adapter: what the model was actually given.
    RecordField("arguments", "string", "worker", "ran"),
    RecordField("width", "int32", "worker", "made"),
    RecordField("height", "int32", "worker", "made"),
    RecordField("seconds", "float64", "worker", "made"),
    RecordField("text_encode_seconds", "float64", "worker", "made"),
    RecordField("vae_seconds", "float64", "worker", "made"),
    RecordField("device", "string", "worker"),
    RecordField("prompt_truncated", "bool_", "worker", "ran"),
    RecordField("nsfw", "bool_", "worker", "made"),
)
WORKER_FIELDS = tuple(field for field in STAGE_RECORD if field.source == "worker")
STAGE_FIELDS = tuple(field.name for field in STAGE_RECORD if field.source in ("stage", "row"))


def stage_struct():
    """The Arrow struct type of one stage's record."""
    import pyarrow as pa

    return pa.struct([(field.name, getattr(pa, field.arrow)()) for field in STAGE_RECORD])
