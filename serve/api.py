"""The requests (OpenAI's Images API plus synth's extension fields), and how one becomes the
work a model replica runs: rows for `canonical_batch`, validated by the stage kind's own
declaration (`parse_stage`), so a request and a job spec's stage accept the same values."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve.config import Limits, ModelConfig
from serve.errors import APIError, from_validation, invalid
from serve.uploads import Upload, mask_for_pipeline

_SEED = Field(None, ge=0, lt=2**63, description="synth: the first image's seed (image i gets seed + i); without "
              "it each image gets a fresh one, returned in data[].seed and the x-synth-seed header.")


class ImageOptions(BaseModel):
    """Fields every image endpoint takes."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="A served model (GET /v1/models); default: the first that "
                              "serves this kind.")
    n: int = Field(1, description="Images to make (1..limits.max_n).")
    size: str | None = Field(None, description="WIDTHxHEIGHT, multiples of 8, e.g. 512x512; default: the "
                             "stage's width and height, or the input image's size.")
    response_format: Literal["b64_json", "url"] = "b64_json"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int | None = Field(None, ge=0, le=100, description="JPEG/WebP quality (default 90).")
    user: str | None = Field(None, description="Accepted for compatibility; unused.")
    seed: int | None = _SEED
    negative_prompt: str | None = Field(None, description="synth: what the image should not show.")
    steps: int | None = Field(None, description="synth: denoising steps (default: the stage's).")
    guidance_scale: float | None = Field(None, description="synth: classifier-free guidance (default: the stage's).")


class GenerationRequest(ImageOptions):
    prompt: str = Field(description="What to draw.")
    quality: str | None = Field(None, description="Accepted for compatibility; unused.")
    style: str | None = Field(None, description="Accepted for compatibility; unused.")
    background: str | None = Field(None, description="Accepted for compatibility; unused.")
    moderation: str | None = Field(None, description="Accepted for compatibility; unused.")


class EditRequest(ImageOptions):
    """Multipart fields besides the `image` and `mask` files."""

    prompt: str
    strength: float | None = Field(None, description="synth: how far to move from the image (default: the "
                                   "stage's; inpaint 1.0, img2img 0.6).")
    quality: str | None = None
    background: str | None = None
    input_fidelity: str | None = None


class VariationRequest(ImageOptions):
    prompt: str | None = Field(None, description="synth: a prompt to steer the variation (default: none).")
    strength: float | None = None


class UpscaleRequest(ImageOptions):
    prompt: str | None = Field(None, description="An optional prompt to steer the upscaler.")


@dataclass
class Work:
    """What one request asks of a model replica: its rows, and how to encode the images."""

    kind: str
    rows: list[dict]
    format: str
    quality: int


@dataclass
class Result:
    images: list[bytes | None]
    errors: list[str]
    batch_size: int  # requests that ran in the same call as this one
    sizes: list[tuple[int, int]] = field(default_factory=list)


_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    match = _SIZE.match(size.strip())
    if not match:
        raise invalid(f"size: {size!r} is not WIDTHxHEIGHT, e.g. 512x512", "size")
    return int(match[1]), int(match[2])


def _check_text(request: ImageOptions, limits: Limits) -> None:
    if not 1 <= request.n <= limits.max_n:
        raise invalid(f"n: {request.n} must be between 1 and {limits.max_n}", "n")
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name, None)
        if text is not None and len(text) > limits.max_prompt_chars:
            raise invalid(f"{name}: {len(text)} characters is over the limit of {limits.max_prompt_chars}", name,
                          "string_above_max_length")
    if isinstance(request, (GenerationRequest, EditRequest)) and not request.prompt.strip():
        raise invalid("prompt: the prompt is empty", "prompt")


def resolve_stage(model: ModelConfig, kind: str, request: ImageOptions):
    """The stage this request runs: the configured declaration with the request's values,
    validated by the kind's own class. Raises an APIError naming the request's field."""
    from pipeline.stages import parse_stage

    configured = model.stage(kind)
    if configured is None:
        raise invalid(f"model: {model.name!r} serves {', '.join(model.kinds())}, not {kind}", "model",
                      "model_not_supported")
    width, height = parse_size(request.size)
    given = {"steps": request.steps, "guidance_scale": request.guidance_scale, "width": width, "height": height,
             "strength": getattr(request, "strength", None), "negative_prompt": request.negative_prompt}
    given = {name: value for name, value in given.items() if value is not None}
    if configured.upscaler and (width or height):
        raise invalid("size: does not apply to upscale, whose output is 4x its input", "size")
    try:
        return parse_stage({**configured.model_dump(exclude_none=True), **given})
    except ValidationError as error:
        raise from_validation(error, {"width": "size", "height": "size"}) from None


def output_size(stage, image: Upload | None) -> tuple[int, int] | None:
    """The size the images come out at, where it is known before running (for the budget)."""
    from pipeline.stages.base import _target_size

    if stage.upscaler:
        return 4 * image.width, 4 * image.height
    if image is not None:
        return _target_size((image.width, image.height), stage.width or 0, stage.height or 0)
    if stage.width and stage.height:
        return stage.width, stage.height
    return None


# Fresh seeds stay below 2**53, so JSON parsers that read numbers as doubles (JavaScript's)
# keep them exact; a caller's own seed may use the whole range.
FRESH_SEEDS = 2**53


def seeds_for(request: ImageOptions) -> list[int]:
    if request.seed is None:
        return [secrets.randbelow(FRESH_SEEDS) for _ in range(request.n)]
    return [(request.seed + i) % 2**63 for i in range(request.n)]


def plan(request: ImageOptions, model: ModelConfig, kind: str, limits: Limits, image: Upload | None = None,
         mask: Upload | None = None) -> tuple[Work, list[int]]:
    """The work for a model replica, and each image's seed; an APIError for a bad request."""
    # 1. Counts and texts, then the stage's fields, by the kind's declaration.
    _check_text(request, limits)
    stage = resolve_stage(model, kind, request)

    # 2. Sizes: within the pixel budget; a mask drawn on its image.
    size = output_size(stage, image)
    if size and size[0] * size[1] > limits.max_pixels:
        param = "image" if stage.upscaler else "size"
        raise APIError(400, f"{param}: {size[0]}x{size[1]} = {size[0] * size[1]} pixels to generate is over the "
                       f"limit ({limits.max_pixels})", param, "image_too_large")
    if mask is not None and (mask.width, mask.height) != (image.width, image.height):
        raise invalid(f"mask: its size {mask.width}x{mask.height} differs from the image's "
                      f"{image.width}x{image.height}", "mask")

    # 3. One row per image: the stage's resolved values ride as the row's overrides.
    seeds = seeds_for(request)
    params = {name: getattr(stage, name) for name in stage.row_params() if getattr(stage, name, None) is not None}
    common = {"prompt": getattr(request, "prompt", None) or "", "negative_prompt": stage.negative_prompt, **params}
    if image is not None:
        common["image"] = image.data
    if mask is not None:
        common["mask"] = mask_for_pipeline(mask)
    rows = [{**common, "id": f"{i}", "seed": seed} for i, seed in enumerate(seeds)]
    quality = 90 if request.output_compression is None else max(1, request.output_compression)
    return Work(kind, rows, request.output_format, quality), seeds
