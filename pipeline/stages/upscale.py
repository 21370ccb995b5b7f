"""upscale: a diffusion upscaler (StableDiffusionUpscalePipeline, 4x) on the input image."""

from __future__ import annotations

from pipeline.stages.base import Group, StageWorker


class UpscaleWorker(StageWorker):
    kind = "upscale"
    params = ("steps", "guidance_scale")

    def generate(self, group: Group):
        return self.pipe(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            image=group.images,
            noise_level=self.spec.noise_level,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            generator=group.generators,
            output_type="pt",
        )
