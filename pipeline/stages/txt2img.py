"""txt2img: prompts to images (StableDiffusionPipeline, SDXL, ... through AutoPipelineForText2Image)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pipeline.params import GuidanceScale, Steps
from pipeline.stages.base import Group, StageWorker
from pipeline.stages.declaration import SizedStage


class Txt2ImgWorker(StageWorker):
    def arguments(self, group: Group) -> dict:
        return dict(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            width=group.width or None,
            height=group.height or None,
            generator=group.generators,
        )


class Txt2ImgStage(SizedStage):
    pipeline_class: ClassVar[str] = "AutoPipelineForText2Image"
    needs_image: ClassVar[bool] = False
    worker: ClassVar[type] = Txt2ImgWorker

    kind: Literal["txt2img"] = "txt2img"
    steps: Steps = 30
    guidance_scale: GuidanceScale = 7.5
