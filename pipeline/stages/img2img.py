"""img2img: start from a noised encoding of the input image (`strength` says how far to move)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pipeline.params import GuidanceScale, Steps, Strength
from pipeline.stages.base import Group, StageWorker
from pipeline.stages.declaration import RefiningStage


class Img2ImgWorker(StageWorker):
    def arguments(self, group: Group) -> dict:
        # The input images were already resized to width x height when those are set.
        return dict(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            image=group.images,
            strength=group.strength,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            generator=group.generators,
        )


class Img2ImgStage(RefiningStage):
    pipeline_class: ClassVar[str] = "AutoPipelineForImage2Image"
    worker: ClassVar[type] = Img2ImgWorker

    kind: Literal["img2img"] = "img2img"
    steps: Steps = 30
    guidance_scale: GuidanceScale = 7.5
    strength: Strength = 0.6
