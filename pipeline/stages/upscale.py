"""upscale: a diffusion upscaler (StableDiffusionUpscalePipeline, 4x) on the input image."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.params import GuidanceScale, Steps
from pipeline.stages.base import Group, StageWorker
from pipeline.stages.declaration import StageBase


class UpscaleWorker(StageWorker):
    def size_label(self, group: Group) -> str:
        width, height = group.images[0].size
        return f"{width}x{height} px in ({4 * width}x{4 * height} px out)"

    def output_size(self, group: Group) -> tuple[int, int]:
        width, height = group.images[0].size
        return 4 * width, 4 * height

    def smaller_fields(self) -> str:
        # Its size is its input's, set by an earlier stage or the table: no width/height here.
        return f"a smaller stages.{self.index}.batch_size, or smaller input images"

    def arguments(self, group: Group) -> dict:
        return dict(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            image=group.images,
            noise_level=self.spec.noise_level,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            generator=group.generators,
        )


class UpscaleStage(StageBase):
    # The x4 upscaler has no AutoPipeline; its model_index.json names its class.
    pipeline_class: ClassVar[str] = "DiffusionPipeline"
    upscaler: ClassVar[bool] = True
    # A prompt may steer the upscaler, but an empty one is fine: the image carries the content.
    needs_prompt: ClassVar[bool] = False
    refused: ClassVar[dict[str, str]] = {
        side: "does not apply to upscale, which takes its size from its input (4x)" for side in ("width", "height")
    }
    worker: ClassVar[type] = UpscaleWorker

    kind: Literal["upscale"] = "upscale"
    steps: Steps = 20
    guidance_scale: GuidanceScale = 9.0
    noise_level: int = Field(
        20, ge=0, description="upscale: noise added to the low-resolution input; more lets it invent detail."
    )
