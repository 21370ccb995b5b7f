"""What every stage kind declares: its spec fields and defaults, the inputs it needs, and how
its pipeline loads. Each kind is one subclass (in its own file, beside its worker); the job
spec, preflight, the per-row checks, the loader and the worker all read these declarations.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.families import FAMILIES, FAMILY_NAMES
from pipeline.lora import MAX_LORAS, LoraSpec
from pipeline.params import ROW_PARAMS, ControlScale, GuidanceScale, Side, Steps, Strength
from pipeline.strict import FieldError, Strict

DType = Literal["auto", "float32", "float16", "bfloat16"]
FamilyName = Literal[FAMILY_NAMES]  # type: ignore[valid-type]


class Replicas(Strict):
    min: int = Field(1, ge=1, description="Actors started before work begins.")
    max: int | None = Field(
        None,
        ge=1,
        description="Most actors; left out, as many as the cluster's GPUs (or CPUs, for CPU stages) allow.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> "Replicas":
        if self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class StageBase(Strict):
    """Fields every kind has. A subclass sets `kind` (the union's tag), its parameters as
    fields with their defaults, and the class variables below."""

    # The diffusers class that loads this kind's pipeline from a model folder.
    pipeline_class: ClassVar[str]
    # True for the x4 upscaler, a pipeline of its own that the generators' folders cannot load.
    upscaler: ClassVar[bool] = False
    # Inputs a row must bring: a prompt, the image (the table's for a first stage, else the
    # previous stage's), a mask (always the table's).
    needs_prompt: ClassVar[bool] = True
    needs_image: ClassVar[bool] = True
    needs_mask: ClassVar[bool] = False
    # Why a field that other kinds take is refused here, where "applies to <kinds>" is not enough.
    refused: ClassVar[dict[str, str]] = {}
    # The worker class (pipeline/stages/base.py) that runs this kind.
    worker: ClassVar[type]

    kind: str
    model: str = Field(
        description="A Hugging Face repo id, a local diffusers folder, an s3:// prefix holding one, or a model "
        "built into synth: synth:shapes (32 px coloured shapes; txt2img, img2img and inpaint)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub model id.")
    family: FamilyName | None = Field(
        None,
        description="The model's family (README, \"Model families\"): the arguments its pipeline takes and the "
        "fields it refuses. Left out: detected from the model's pipeline class before the job starts. "
        "Variants that share an architecture (sd-turbo, sdxl-turbo) must be named; naming one also sets its "
        "defaults for steps and guidance_scale.",
    )
    # Each kind sets its own defaults for these two.
    steps: Steps
    guidance_scale: GuidanceScale
    negative_prompt: str | None = Field(None, description="Default negative prompt (a row's own column wins).")
    scheduler: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9]+Scheduler$",
        description="A diffusers scheduler class name (e.g. DPMSolverMultistepScheduler); default: the model's.",
    )
    dtype: DType = Field(
        "auto", description="auto: bfloat16 on CUDA (float16 where bf16 is not native), float32 on CPU."
    )
    allow_pickle: bool = Field(
        False,
        description="Allow a model folder that holds pickle weights (.bin, .ckpt, .pt, .pth, .pkl), which can "
        "run code when loaded. Off: such folders are refused and only safetensors load.",
    )
    loras: list[LoraSpec] = Field(
        default_factory=list,
        max_length=MAX_LORAS,
        description="LoRA adapters on the model, loaded once per actor; every call runs with all of them at their "
        "weights, unless a row picks one by name (input.columns.lora, with fuse_loras: false).",
    )
    fuse_loras: bool = Field(
        True,
        description="Fuse the adapters into the weights once per actor: calls cost what the base model's do, but "
        "rows cannot pick an adapter. false: keep them apart and switch per call (set_adapters), a little "
        "slower per step.",
    )
    batch_size: int = Field(4, ge=1, description="Rows per pipeline call; larger uses the GPU better and more memory.")
    replicas: Replicas = Field(default_factory=Replicas)
    gpus: float | None = Field(
        None, ge=0, description="GPUs per replica (fractions share a GPU); default: 1 if the cluster has GPUs, else 0."
    )
    cpus: float | None = Field(
        None,
        gt=0,
        description="CPUs per replica; default: 1, less on small machines so read and write tasks always "
        "keep a CPU.",
    )

    @model_validator(mode="before")
    @classmethod
    def _fields_of_other_kinds(cls, data: Any) -> Any:
        """A field another kind takes, set here, is refused with the kinds that take it. Null
        means "not set": the kind's default, or nothing for another kind's field (older
        resolved specs list every kind's fields)."""
        from pipeline.stages import STAGES

        if not isinstance(data, dict):
            return data
        data = {name: value for name, value in data.items()
                if value is not None or (name in cls.model_fields and cls.model_fields[name].is_required())}
        family = FAMILIES.get(data.get("family")) if isinstance(data.get("family"), str) else None
        if family:  # a named family's defaults, for the fields the stage leaves out
            data = {**{name: value for name, value in family.defaults.items() if name in cls.model_fields}, **data}
        for name in [name for name in data if name not in cls.model_fields]:
            takers = [kind for kind, declared in STAGES.items() if name in declared.model_fields]
            if not takers:
                continue  # unknown everywhere: extra="forbid" names it
            kind = cls.model_fields["kind"].default
            listed = ", ".join(takers[:-1]) + f" and {takers[-1]}" if len(takers) > 1 else takers[0]
            raise FieldError(name, cls.refused.get(name, f"applies to {listed}, not {kind}"))
        return data

    @model_validator(mode="after")
    def _fits_its_family(self) -> "StageBase":
        """A named family refuses here what it would ignore; a detected one in preflight."""
        problem = FAMILIES[self.family].refusal(self.kind, self.model_dump()) if self.family else None
        if problem:
            raise FieldError(*problem)
        names = [lora.name for lora in self.loras]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise FieldError("loras", f"the name {repeated[0]!r} is given to more than one adapter")
        return self

    @classmethod
    def row_params(cls) -> tuple[str, ...]:
        """The per-row overridable parameters this kind takes (see pipeline/params.py)."""
        return tuple(param for param in ROW_PARAMS if param in cls.model_fields)

    def denoising_error(self, steps: int, strength: float | None) -> str | None:
        """Why these steps and strength cannot run, or None: img2img and inpaint run
        int(steps x strength) denoising steps, which must leave at least one."""
        if strength is not None and strength == strength and int(steps * strength) < 1:  # not NaN
            return f"steps x strength = {steps} x {strength:g} leaves no denoising step"
        return None


class SizedStage(StageBase):
    """A kind whose output size the spec (or a row) may set."""

    width: Side | None = Field(
        None,
        description="Output width in pixels (multiple of 8); default: the model's for txt2img, the input's for "
        "img2img/inpaint (which keep its aspect ratio when only one side is set).",
    )
    height: Side | None = Field(None, description="Output height in pixels (multiple of 8); default as for width.")
    controlnet: str | None = Field(
        None,
        description="A ControlNet (diffusers ControlNetModel folder: a hub id or a local folder) for the model, "
        "conditioned on each row's control image (input.columns.control_image), resized to the output size. "
        "txt2img without width and height takes the control image's size.",
    )
    controlnet_conditioning_scale: ControlScale | None = Field(
        None, description="The ControlNet's strength (default 1 with a controlnet, for every kind; a row may override it)."
    )

    @model_validator(mode="after")
    def _controlnet_fields(self) -> "SizedStage":
        if self.controlnet_conditioning_scale is not None and not self.controlnet:
            raise FieldError("controlnet_conditioning_scale", "applies only to a stage with a controlnet")
        if self.controlnet and self.controlnet.startswith("s3://"):
            raise FieldError("controlnet", "s3:// ControlNets are not supported yet: give a hub id or a local folder")
        return self


class RefiningStage(SizedStage):
    """A kind that starts from a noised encoding of an input image."""

    strength: Strength  # each kind sets its default

    @model_validator(mode="after")
    def _leaves_a_step(self) -> "RefiningStage":
        problem = self.denoising_error(self.steps, self.strength)
        if problem:
            raise FieldError("strength", problem)
        return self
