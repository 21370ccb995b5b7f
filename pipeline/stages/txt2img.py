"""txt2img: prompts to images (StableDiffusionPipeline, SDXL, ... through AutoPipelineForText2Image)."""

from __future__ import annotations

from pipeline.stages.base import Group, StageWorker


class Txt2ImgWorker(StageWorker):
    kind = "txt2img"
    params = ("steps", "guidance_scale", "width", "height")
    needs_image = False

    def generate(self, group: Group):
        return self.pipe(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            width=group.width or None,
            height=group.height or None,
            generator=group.generators,
            output_type="pt",
        )
