"""inpaint: regenerate the masked (white) area of the input image, keep the rest."""

from __future__ import annotations

from typing import ClassVar, Literal

from pipeline import batch as B
from pipeline.params import GuidanceScale, Steps, Strength
from pipeline.stages.base import Group, StageWorker
from pipeline.stages.declaration import RefiningStage


class InpaintWorker(StageWorker):
    def row_error(self, batch, row: int) -> str | None:
        reason = super().row_error(batch, row)
        if reason:
            return reason
        mask_size = (int(batch[B.MASK_WIDTH][row]), int(batch[B.MASK_HEIGHT][row]))
        if mask_size == (0, 0):
            return f"stages.{self.index} (inpaint): the row has no mask"
        # A mask is drawn on the row's input image, or on the image this stage receives
        # (which an earlier stage of the chain may have resized, or made: txt2img ->
        # inpaint). Either way it is resized as that image is (see _inputs).
        source = (int(batch[B.SOURCE_WIDTH][row]), int(batch[B.SOURCE_HEIGHT][row]))
        current = (int(batch[B.WIDTH][row]), int(batch[B.HEIGHT][row]))
        if mask_size not in (source, current):
            size, at = f"{mask_size[0]}x{mask_size[1]}", f"at stages.{self.index} (inpaint)"
            if source[0] and source != current:
                return (f"mask: its size {size} fits neither the input image's {source[0]}x{source[1]} "
                        f"nor the image's {current[0]}x{current[1]} {at}")
            return f"mask: its size {size} differs from the image's {current[0]}x{current[1]} {at}"
        return None

    def arguments(self, group: Group) -> dict:
        # Inputs already sit at a multiple of 8 (see _target_size); the pipeline would refuse others.
        width, height = group.images[0].size
        return dict(
            prompt=group.prompts,
            negative_prompt=group.negative_prompts,
            image=group.images,
            mask_image=group.masks,
            strength=group.strength,
            width=width,
            height=height,
            num_inference_steps=group.steps,
            guidance_scale=group.guidance_scale,
            generator=group.generators,
        )


class InpaintStage(RefiningStage):
    pipeline_class: ClassVar[str] = "AutoPipelineForInpainting"
    needs_mask: ClassVar[bool] = True
    worker: ClassVar[type] = InpaintWorker

    kind: Literal["inpaint"] = "inpaint"
    steps: Steps = 30
    guidance_scale: GuidanceScale = 7.5
    strength: Strength = 1.0
