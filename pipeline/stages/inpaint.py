"""inpaint: regenerate the masked (white) area of the input image, keep the rest."""

from __future__ import annotations

from pipeline import batch as B
from pipeline.stages.base import Group, StageWorker


class InpaintWorker(StageWorker):
    kind = "inpaint"
    params = ("steps", "guidance_scale", "strength", "width", "height")
    needs_mask = True

    def row_error(self, batch, row: int) -> str | None:
        reason = super().row_error(batch, row)
        if reason:
            return reason
        mask_size = (int(batch[B.MASK_WIDTH][row]), int(batch[B.MASK_HEIGHT][row]))
        if mask_size == (0, 0):
            return f"stages.{self.index} (inpaint): the row has no mask"
        # A mask is drawn on the row's input image; without one (txt2img -> inpaint), on the
        # image this stage receives. It is then resized as that image is (see _inputs).
        drawn_on, which = (batch[B.SOURCE_WIDTH][row], batch[B.SOURCE_HEIGHT][row]), "input image's"
        if not drawn_on[0]:
            drawn_on, which = (batch[B.WIDTH][row], batch[B.HEIGHT][row]), "image's"
        if mask_size != (int(drawn_on[0]), int(drawn_on[1])):
            return (
                f"mask: its size {mask_size[0]}x{mask_size[1]} differs from the {which} "
                f"{int(drawn_on[0])}x{int(drawn_on[1])} at stages.{self.index} (inpaint)"
            )
        return None

    def generate(self, group: Group):
        # Inputs already sit at a multiple of 8 (see _target_size); the pipeline would refuse others.
        width, height = group.images[0].size
        return self.pipe(
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
            output_type="pt",
        )
