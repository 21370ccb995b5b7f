"""Generation parameters that a row may override, each declared once with its bounds.

A stage declaration's field and a table's per-row cell are validated by the same type, so
the spec and the rows cannot disagree about what a valid `steps` or `width` is.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated, Any

import annotated_types
from pydantic import AfterValidator, Field, TypeAdapter, ValidationError


def multiple_of_8(value: int) -> int:
    if value % 8:
        raise ValueError(f"must be a multiple of 8 (the VAE works on 8x8 pixel cells), got {value}")
    return value


Steps = Annotated[int, Field(ge=1, le=1000, description="Denoising steps; cost grows linearly.")]
GuidanceScale = Annotated[
    float,
    Field(
        ge=0,
        allow_inf_nan=False,
        description="Classifier-free guidance; above 1 runs the denoiser twice per step (2x cost) for stronger "
        "prompt adherence.",
    ),
]
Strength = Annotated[
    float,
    Field(
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="img2img/inpaint: how far to move from the input image (1 = ignore it); runs about "
        "strength x steps denoiser calls.",
    ),
]
Side = Annotated[int, Field(ge=8), AfterValidator(multiple_of_8)]
ControlScale = Annotated[
    float,
    Field(
        ge=0,
        le=10,
        allow_inf_nan=False,
        description="How strongly the ControlNet's conditioning image steers the image; 0 turns it off (the "
        "base model's image, at the ControlNet's cost).",
    ),
]

# The parameters a row may override, in the order the pipeline's columns carry them. The
# row's seed is overridable too, but it is the row's, not a stage's (see prepare.py).
ROW_PARAMS: dict[str, Any] = {
    "steps": Steps,
    "guidance_scale": GuidanceScale,
    "strength": Strength,
    "width": Side,
    "height": Side,
    "controlnet_conditioning_scale": ControlScale,
}


@lru_cache(maxsize=None)
def _adapter(param: str) -> TypeAdapter:
    return TypeAdapter(ROW_PARAMS[param])


@lru_cache(maxsize=None)
def rule(param: str) -> str:
    """The bounds of a parameter in words, read from its type: "between 1 and 1000"."""
    metadata = []
    for item in ROW_PARAMS[param].__metadata__:  # a Field's constraints sit in its own metadata
        metadata.extend(getattr(item, "metadata", [item]))
    bound = {name: getattr(item, name) for item in metadata for name in ("ge", "gt", "le")
             if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, name)}
    if any(getattr(item, "func", None) is multiple_of_8 for item in metadata):
        return f"a multiple of 8, {bound['ge']} or more"
    if "ge" in bound and "le" in bound:
        return f"between {bound['ge']} and {bound['le']}"
    if "gt" in bound and "le" in bound:
        return f"in ({bound['gt']}, {bound['le']}]"
    return f"{bound['ge']} or more"


def check_cell(param: str, value: Any) -> tuple[float, str | None]:
    """(value as float, or NaN for "not set"; error) for one per-row override cell, checked
    with the parameter's own type."""
    if value is None:
        return math.nan, None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan, f"{param}: {value!r} is not a number"
    if math.isnan(number):
        return math.nan, None
    if math.isinf(number):
        return math.nan, f"{param}: {value!r} is not a finite number"
    try:
        return float(_adapter(param).validate_python(number)), None
    except ValidationError as error:
        if error.errors()[0]["type"] == "int_from_float":
            return math.nan, f"{param}: {value!r} is not a whole number"
        return math.nan, f"{param}: {value!r} must be {rule(param)}"
