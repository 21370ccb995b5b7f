"""upscale: a diffusion upscaler (StableDiffusionUpscalePipeline, 4x) on the input image."""

from __future__ import annotations

from pipeline.stages.base import Group, StageWorker


class UpscaleWorker(StageWorker):
    kind = "upscale"
    params = ("steps", "guidance_scale")

    def size_label(self, group: Group) -> str:
        width, height = group.images[0].size
        return f"{width}x{height} px in ({4 * width}x{4 * height} px out)"

    def smaller_fields(self) -> str:
        # Its size is its input's, set by an earlier stage or the table: no width/height here.
        return f"a smaller stages.{self.index}.batch_size, or smaller input images"

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
