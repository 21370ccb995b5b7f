"""img2img: start from a noised encoding of the input image (`strength` says how far to move)."""

from __future__ import annotations

from pipeline.stages.base import Group, StageWorker


class Img2ImgWorker(StageWorker):
    kind = "img2img"
    params = ("steps", "guidance_scale", "strength", "width", "height")

    def generate(self, group: Group):
        # The input images were already resized to width x height when those are set.
        return self.pipe(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            image=group.images,
            strength=group.strength,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            generator=group.generators,
            output_type="pt",
        )
