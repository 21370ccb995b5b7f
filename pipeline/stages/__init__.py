"""Stage workers, one per kind: a plain object with a batch in and a batch out."""

from __future__ import annotations

from pipeline.stages.base import Group, StageWorker
from pipeline.stages.img2img import Img2ImgWorker
from pipeline.stages.inpaint import InpaintWorker
from pipeline.stages.txt2img import Txt2ImgWorker
from pipeline.stages.upscale import UpscaleWorker

WORKERS: dict[str, type[StageWorker]] = {
    worker.kind: worker for worker in (Txt2ImgWorker, Img2ImgWorker, InpaintWorker, UpscaleWorker)
}

__all__ = ["WORKERS", "Group", "StageWorker"]
