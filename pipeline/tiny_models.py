"""Tiny random-weight diffusers models, built locally so tests and the demo never touch the network.

The folders written here are ordinary diffusers pipeline folders (model_index.json, one
sub-folder per component, safetensors weights, tokenizer files), so they load through
exactly the same code path as a real model (`pipeline.models.load_pipeline`).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.stages import STAGES

# One tiny model per stage kind; the architecture follows from what the kind declares.
KINDS = tuple(STAGES)

# The text encoder's context length. CLIPTokenizer needs it explicitly when built from
# local files, otherwise truncation raises OverflowError.
MAX_TOKENS = 77
_HIDDEN = 32


def _byte_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (as in GPT-2 and CLIP)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_tokenizer(out_dir: Path) -> None:
    """A character-level CLIP tokenizer: every byte symbol, alone and word-final, no merges
    (the shapes model's word tokenizer with no words) and CLIP's 77-token context."""
    from pipeline.shapes.tokenizer import write_word_tokenizer  # it imports this module

    write_word_tokenizer(out_dir, [], max_tokens=MAX_TOKENS)


def _text_encoder(projection: bool = False):
    """CLIP's text model, tiny; with its projection head (SDXL's second encoder) if asked."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_size=_HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-5,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=2 + 2 * 256,
        max_position_embeddings=MAX_TOKENS,
        **({"projection_dim": _HIDDEN} if projection else {}),
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(blocks: int, scaling_factor: float = 0.18215):
    """An AutoencoderKL whose spatial factor is 2 ** (blocks - 1)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    channels = [32, 32, 64][-blocks:]
    return AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks,
        latent_channels=4,
        norm_num_groups=32,
        scaling_factor=scaling_factor,
    )


def _unet(in_channels: int, **architecture):
    """SD 1.5's UNet shape, tiny; `architecture` adds what SD 2.x and SDXL change."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        **{
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 16,
            "in_channels": in_channels,
            "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": _HIDDEN,
            "norm_num_groups": 32,
            **architecture,
        }
    )


# SD 2.x: per-block attention heads and linear projections in the transformer blocks.
_SD2_UNET = {"attention_head_dim": (2, 4), "use_linear_projection": True}
# SDXL: cross-attention on both text encoders' states side by side, and the "text_time"
# added embedding of the second encoder's pooled output and the six size/crop numbers.
_TIME_EMBED = 8
_SDXL_UNET = {
    **_SD2_UNET,
    "cross_attention_dim": 2 * _HIDDEN,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": _TIME_EMBED,
    "projection_class_embeddings_input_dim": 6 * _TIME_EMBED + _HIDDEN,
}


def _upscale_unet():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    # 4 latent channels + the 3 channels of the low-resolution image, as in SD x4 upscaler;
    # num_class_embeds carries the noise level added to the low-res image.
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
        attention_head_dim=8,
        use_linear_projection=True,
        num_class_embeds=400,
        norm_num_groups=32,
    )


def _ddim(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    # steps_offset/clip_sample set explicitly: the defaults make loading warn.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _turbo_scheduler():
    """The turbo models' scheduler: Euler ancestral with trailing timesteps, so 1-4 steps
    start from pure noise."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
        steps_offset=1,  # unused with trailing spacing; set so loading does not warn
    )


# Checkpoint styles the builder makes, each of a family in pipeline/families.py. sd2 is the
# sd family's v-prediction style (SD 2.x): same call, another scheduler and UNet config.
TINY_FAMILIES = {"sd": "sd", "sd2": "sd", "sdxl": "sdxl", "sd-turbo": "sd-turbo", "sdxl-turbo": "sdxl-turbo",
                 "wuerstchen": "wuerstchen", "stable-cascade": "stable-cascade", "sd3": "sd3", "flux": "flux",
                 "pixart-sigma": "pixart", "kandinsky22": "kandinsky22",
                 "sd-upscale": "sd-upscale"}


# Styles built in pipeline/tiny_families.py (transformer denoisers, multi-stage pipelines):
# style -> its builder there, which takes the stage kind.
OTHER_FAMILIES = {"wuerstchen": "wuerstchen", "stable-cascade": "stable_cascade", "sd3": "sd3", "flux": "flux",
                  "pixart-sigma": "pixart_sigma", "kandinsky22": "kandinsky22"}


def _tokenizer():
    import tempfile

    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


def build_tiny_pipeline(kind: str, family: str | None = None):
    """Return an in-memory tiny diffusers pipeline for a stage kind (random weights, seed 0),
    of a family's style (TINY_FAMILIES; default: sd, or sd-upscale for upscale)."""
    from pipeline.families import FAMILIES

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    family = family or ("sd-upscale" if STAGES[kind].upscaler else "sd")
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(TINY_FAMILIES)}")
    if kind not in FAMILIES[TINY_FAMILIES[family]].kinds:
        raise ValueError(f"the {family} family has no {kind} pipeline")
    if family in ("sdxl", "sdxl-turbo"):
        return _sdxl(kind, family)
    if family in OTHER_FAMILIES:
        from pipeline import tiny_families

        return getattr(tiny_families, OTHER_FAMILIES[family])(kind)
    tokenizer = _tokenizer()
    common = dict(text_encoder=_text_encoder(), tokenizer=tokenizer)
    if family == "sd2":
        unet, scheduler = _SD2_UNET, _ddim("v_prediction")
    elif family == "sd-turbo":
        unet, scheduler = _SD2_UNET, _turbo_scheduler()
    else:
        unet, scheduler = {}, _ddim()
    if STAGES[kind].upscaler:
        from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

        return StableDiffusionUpscalePipeline(
            # Factor 4 and the x4 upscaler's latent scaling, which its pipeline checks for.
            vae=_vae(blocks=3, scaling_factor=0.08333),
            unet=_upscale_unet(),
            low_res_scheduler=DDPMScheduler(),
            scheduler=DDIMScheduler(prediction_type="v_prediction", steps_offset=1, clip_sample=False),
            max_noise_level=350,
            **common,
        )
    safety = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if STAGES[kind].needs_mask:
        from diffusers import StableDiffusionInpaintPipeline

        # 9 input channels (latents + mask + masked-image latents): a real inpainting UNet.
        return StableDiffusionInpaintPipeline(
            vae=_vae(blocks=2), unet=_unet(in_channels=9, **unet), scheduler=scheduler, **common, **safety
        )
    from diffusers import StableDiffusionPipeline

    # txt2img and img2img share one model: the img2img stage loads a txt2img folder.
    return StableDiffusionPipeline(
        vae=_vae(blocks=2), unet=_unet(in_channels=4, **unet), scheduler=scheduler, **common, **safety
    )


def _sdxl(kind: str, family: str):
    from diffusers import StableDiffusionXLInpaintPipeline, StableDiffusionXLPipeline

    tokenizer = _tokenizer()
    inpaint = STAGES[kind].needs_mask
    components = dict(
        vae=_vae(blocks=2, scaling_factor=0.13025),
        unet=_unet(in_channels=9 if inpaint else 4, **_SDXL_UNET),
        scheduler=_turbo_scheduler() if family == "sdxl-turbo" else _ddim(),
        text_encoder=_text_encoder(),
        text_encoder_2=_text_encoder(projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
    )
    return (StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline)(**components)


def write_tiny_model(out_dir: str | Path, kind: str, family: str | None = None) -> Path:
    """Write a tiny model folder for `kind` of a family's style (safetensors weights) and
    return its path."""
    out = Path(out_dir)
    pipe = build_tiny_pipeline(kind, family)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def write_tiny_lora(out_file: str | Path, kind: str = "txt2img", family: str | None = None, seed: int = 1) -> Path:
    """Write a random LoRA adapter (diffusers format, safetensors) for the tiny model of this
    kind and family: rank 4 on the UNet's attention projections, initialised at random (a
    fresh LoRA's up-projection is zero, which would change nothing)."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = build_tiny_pipeline(kind, family)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    out = Path(out_file)
    type(pipe).save_lora_weights(out.parent, unet_lora_layers=layers, weight_name=out.name, safe_serialization=True)
    return out


def write_tiny_controlnet(out_dir: str | Path, family: str | None = None, seed: int = 1) -> Path:
    """Write a tiny ControlNet (diffusers folder, safetensors) for the tiny txt2img model of a
    family: the UNet's encoder copied, with a conditioning embedding that downsamples as the
    tiny VAE does (2x). Its output convolutions, zero at initialisation (a fresh ControlNet
    adds nothing), are randomised so that it steers the image."""
    import torch
    from diffusers import ControlNetModel

    unet = build_tiny_pipeline("txt2img", family).unet
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    torch.manual_seed(seed)
    with torch.no_grad():
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out]:
            conv.weight.normal_(std=0.05)
            conv.bias.normal_(std=0.05)
    out = Path(out_dir)
    controlnet.save_pretrained(out, safe_serialization=True)
    return out
