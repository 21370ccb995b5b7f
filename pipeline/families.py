"""Model families, each declared once: the pipeline classes that identify it, the stage kinds
it serves, the defaults it needs, and its call adapter (how a stage's parameters become its
pipeline's arguments, and which spec fields it would silently ignore, and so refuses).

Validation (an explicit `family` on a stage), preflight (the family detected from a model's
model_index.json), the stage worker (the arguments it passes and records) and the README's
family table all read these declarations. Nothing here imports torch or diffusers when
imported (the CLI and spec validation stay fast).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

# Arguments that carry the rows' own data; the rest are the call's settings, which the
# metadata records per row (stage record field `arguments`).
ROW_ARGUMENTS = ("prompt", "negative_prompt", "image", "mask_image", "control_image", "generator", "output_type")

# Each family's pipelines, with and without a ControlNet (the classes a stage kind loads).
_SD_CLASSES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
               "StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
               "StableDiffusionControlNetInpaintPipeline")
_SDXL_CLASSES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
                 "StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
                 "StableDiffusionXLControlNetInpaintPipeline")
_GENERATING = ("txt2img", "img2img", "inpaint")


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    # Pipeline classes (model_index.json's `_class_name`, or the class a stage kind loads)
    # of this family's architecture.
    classes: tuple[str, ...]
    kinds: tuple[str, ...]
    # Taken as the family of a model of these classes when the stage names none. Variants
    # that share an architecture (turbo) must be named: their weights alone do not say.
    detected: bool = True
    # Stage fields this family sets when a stage names it and leaves them out.
    defaults: dict[str, Any] = field(default_factory=dict)
    # Classifier-free guidance runs only for guidance_scale > 1; below it diffusers drops
    # the negative prompt without a word.
    guidance_threshold: float | None = 1.0
    # SDXL's micro-conditioning: original and target size and crop offset, passed as the
    # sizes generated at (its defaults), so the metadata records them.
    size_conditioning: bool = False
    # The spec's names -> this family's argument names (Würstchen's prior takes the steps
    # and guidance; its decoder's run at `fixed`).
    renamed: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    # Takes LoRA adapters and ControlNets (the stage's loras and controlnet).
    adapters: bool = True
    # The side an asked side comes out at, where the model rounds it (None: as asked).
    output_side: Callable[[int], int] | None = None
    # Why a negative prompt is never used, where no guidance_scale makes it count.
    ignores_negative_prompt: str | None = None
    # Kandinsky 2.2's prior runs the negative prompts as extra rows and wants a generator
    # for each: without them it raises IndexError. Each negative gets its own, seeded from
    # its row's (negative_generator).
    generators_for_negatives: bool = False
    # Kandinsky 2.2 returns output_type="pt" images undenormalised, in [-1, 1] and beyond.
    signed_pt_output: bool = False

    def refusal(self, kind: str, fields: dict[str, Any]) -> tuple[str, str] | None:
        """(field, why) for the first spec field this family cannot honour with these
        values, or None. `fields` holds a stage's (or a row's) values by spec field name."""
        if kind not in self.kinds:
            return "kind", f"the {self.name} family has no {kind} pipeline; it serves {', '.join(self.kinds)}"
        if not self.adapters:
            for name in ("loras", "controlnet"):
                if fields.get(name):
                    return name, f"the {self.name} family takes no {name} here"
        if self.ignores_negative_prompt and fields.get("negative_prompt"):
            return "negative_prompt", f"{self.name} ignores negative_prompt: {self.ignores_negative_prompt}"
        guidance = fields.get("guidance_scale")
        if (self.guidance_threshold is not None and fields.get("negative_prompt") and guidance is not None
                and guidance <= self.guidance_threshold):
            return "negative_prompt", (
                f"{self.name} ignores negative_prompt when guidance_scale <= {self.guidance_threshold:g} "
                f"(it is {guidance:g}); raise guidance_scale above {self.guidance_threshold:g} or leave "
                "negative_prompt out"
            )
        return None

    def arguments(self, kind: str, call: dict[str, Any], size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline call's arguments: the stage's SD-shaped `call` (prompt, negative_prompt,
        num_inference_steps, guidance_scale, ...) adapted to this family. size: (width,
        height) the call generates at."""
        call = dict(call)
        control = call.pop("control", None)
        if control is not None:  # a ControlNet pipeline: txt2img takes the conditioning as its image
            if kind == "txt2img":
                call.update(image=control, width=size[0], height=size[1])
            else:
                call["control_image"] = control
        if self.size_conditioning and kind in _GENERATING:
            width, height = size
            call.update(original_size=(height, width), target_size=(height, width), crops_coords_top_left=(0, 0))
        if self.generators_for_negatives and call.get("negative_prompt") and isinstance(call.get("generator"), list):
            call["generator"] = call["generator"] + [negative_generator(g) for g in call["generator"]]
        if self.renamed or self.fixed:
            # None (no size, no negative prompt): the pipeline's own default, which for these
            # families is not always None (PixArt's negative_prompt is "").
            call = {self.renamed.get(name, name): value for name, value in call.items() if value is not None}
            call.update(self.fixed)
        return call


def negative_generator(generator):
    """The generator of a row's negative prompt where a family needs one (Kandinsky 2.2's
    prior): seeded from the row's, so a row's image depends on its seed alone."""
    import torch

    return torch.Generator(generator.device).manual_seed((generator.initial_seed() + NEGATIVE_SEED_OFFSET) % 2**63)


NEGATIVE_SEED_OFFSET = 1_000_003


def _wuerstchen_side(side: int) -> int:
    """Würstchen's prior works at 1/42.67 of the image, rounded up; its decoder at 10.67x
    that, rounded down; the VQGAN decodes 4x: 32 px asked gives 40."""
    return int(math.ceil(side / 42.67) * 10.67) * 4


# SD-Turbo and SDXL-Turbo: their weights look like SD 2.1's and SDXL's, so they are named,
# never detected, and bring the distilled recipe (few steps, no guidance).
_TURBO = dict(detected=False, defaults={"steps": 4, "guidance_scale": 0.0})

# Würstchen and Stable Cascade call alike: the stage's steps and guidance go to the prior,
# the decoder runs at diffusers' defaults, the size is rounded through the prior's latent.
_CASCADE = dict(
    renamed={"num_inference_steps": "prior_num_inference_steps", "guidance_scale": "prior_guidance_scale"},
    fixed={"num_inference_steps": 12, "decoder_guidance_scale": 0.0},
    adapters=False,
    output_side=_wuerstchen_side,
)

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "sd",
            "Stable Diffusion 1.x and 2.x (epsilon or v-prediction, read from the scheduler's config)",
            _SD_CLASSES,
            _GENERATING,
        ),
        Family(
            "sdxl",
            "Stable Diffusion XL (two text encoders; size and crop conditioning)",
            _SDXL_CLASSES,
            _GENERATING,
            size_conditioning=True,
        ),
        Family(
            "sd-turbo",
            "SD-Turbo: SD 2.1 distilled for 1-4 steps without guidance",
            _SD_CLASSES,
            _GENERATING,
            **_TURBO,
        ),
        Family(
            "sdxl-turbo",
            "SDXL-Turbo: SDXL distilled for 1-4 steps without guidance",
            _SDXL_CLASSES,
            _GENERATING,
            **_TURBO,
            size_conditioning=True,
        ),
        Family(
            "wuerstchen",
            "Würstchen (v2): a text-conditioned prior in a 42x-compressed latent, then a decoder; the stage's steps "
            "and guidance_scale are the prior's, the decoder runs its default 12 steps without guidance",
            ("WuerstchenCombinedPipeline", "WuerstchenDecoderPipeline"),
            ("txt2img",),
            **_CASCADE,
        ),
        Family(
            "stable-cascade",
            "Stable Cascade (Würstchen v3): as wuerstchen, with Stable Cascade's UNets for prior and decoder",
            ("StableCascadeCombinedPipeline", "StableCascadeDecoderPipeline"),
            ("txt2img",),
            **_CASCADE,
        ),
        Family(
            "sd3",
            "Stable Diffusion 3 / 3.5 (an MMDiT transformer; two CLIP encoders and T5)",
            ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
            _GENERATING,
            adapters=False,
        ),
        Family(
            "flux",
            "FLUX.1 (dev, schnell): a rectified-flow transformer; guidance_scale feeds its guidance embedding",
            ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
            _GENERATING,
            guidance_threshold=None,
            ignores_negative_prompt="its guidance_scale feeds a guidance embedding, not classifier-free guidance, "
            "and a negative prompt counts only with true_cfg_scale > 1, which synth does not pass",
            adapters=False,
        ),
        Family(
            "pixart",
            "PixArt-α and PixArt-Σ: a DiT on T5 text embeddings",
            ("PixArtAlphaPipeline", "PixArtSigmaPipeline"),
            ("txt2img",),
            # Binning (on by default) snaps the asked size to its aspect-ratio bins and
            # refuses sample sizes it has no bins for; off, the asked size is the size made.
            # clean_caption would need bs4 and ftfy, and falls back to off without them.
            fixed={"use_resolution_binning": False, "clean_caption": False},
            adapters=False,
        ),
        Family(
            "kandinsky22",
            "Kandinsky 2.2: a CLIP-image-embedding prior, then a UNet decoder and MoVQ; the stage's steps and "
            "guidance_scale are the decoder's, the prior runs its default 25 steps at guidance 4",
            # The hub's decoder repo (KandinskyV22Pipeline) loads as the combined pipeline:
            # AutoPipeline connects the prior its model card names.
            ("KandinskyV22CombinedPipeline", "KandinskyV22Pipeline"),
            ("txt2img",),
            fixed={"prior_num_inference_steps": 25, "prior_guidance_scale": 4.0},
            # The negative prompt goes to the prior, which guides at its fixed 4.0 whatever the
            # decoder's guidance_scale: never ignored.
            guidance_threshold=None,
            adapters=False,
            generators_for_negatives=True,
            signed_pt_output=True,
        ),
        Family(
            "sd-upscale",
            "The Stable Diffusion x4 upscaler",
            ("StableDiffusionUpscalePipeline",),
            ("upscale",),
        ),
    )
}
FAMILY_NAMES = tuple(FAMILIES)


def detect_family(pipeline_class: str) -> Family | None:
    """The family a model of this pipeline class is taken to be, or None for a class no
    family declares."""
    for family in FAMILIES.values():
        if family.detected and pipeline_class in family.classes:
            return family
    return None


def resolve_family(named: str | None, pipeline_class: str, model: str) -> Family:
    """The family a stage runs as: the one it names, which must fit the model's class, else
    the one detected from that class. ValueError (naming what to set) otherwise."""
    if named:
        family = FAMILIES[named]
        if pipeline_class not in family.classes:
            found = detect_family(pipeline_class)
            said = f"the {found.name} family" if found else "no family synth declares"
            raise ValueError(f"{model!r} is a {pipeline_class} ({said}), not a {named} model")
        return family
    family = detect_family(pipeline_class)
    if family is None:
        raise ValueError(
            f"{model!r} is a {pipeline_class}, of no family synth declares ({', '.join(FAMILY_NAMES)}); "
            "see the README's family table"
        )
    return family
