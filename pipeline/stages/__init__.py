"""Stage kinds: each is declared once, a pydantic class beside its worker, in its own file.

`StageSpec` is their union, told apart by `kind`; the job spec, preflight, the loader and the
runner read what a kind needs from its class in STAGES.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter

from pipeline.stages.base import Group, MissingColumns, StageWorker
from pipeline.stages.declaration import Replicas, StageBase
from pipeline.stages.img2img import Img2ImgStage
from pipeline.stages.inpaint import InpaintStage
from pipeline.stages.txt2img import Txt2ImgStage
from pipeline.stages.upscale import UpscaleStage

STAGES: dict[str, type[StageBase]] = {
    declared.model_fields["kind"].default: declared
    for declared in (Txt2ImgStage, Img2ImgStage, InpaintStage, UpscaleStage)
}
StageSpec = Annotated[Union[Txt2ImgStage, Img2ImgStage, InpaintStage, UpscaleStage], Field(discriminator="kind")]
WORKERS: dict[str, type[StageWorker]] = {kind: declared.worker for kind, declared in STAGES.items()}

_ADAPTER = TypeAdapter(StageSpec)


def parse_stage(stage: StageBase | dict[str, Any]) -> StageBase:
    """A stage's declaration from its fields (a dict, as in a spec file), or as it is.
    Raises pydantic's ValidationError; pipeline.spec.format_validation_error words it."""
    return stage if isinstance(stage, StageBase) else _ADAPTER.validate_python(stage)


__all__ = ["STAGES", "StageSpec", "WORKERS", "Group", "MissingColumns", "Replicas", "StageBase", "StageWorker",
           "parse_stage"]
