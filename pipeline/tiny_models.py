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


def _text_encoder():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

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
    )
    return CLIPTextModel(config)


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


def _unet(in_channels: int):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=_HIDDEN,
        norm_num_groups=32,
    )


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


def _ddim():
    from diffusers import DDIMScheduler

    # steps_offset/clip_sample set explicitly: the defaults make loading warn.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build_tiny_pipeline(kind: str):
    """Return an in-memory tiny diffusers pipeline for a stage kind (random weights, seed 0)."""
    import tempfile

    from transformers import CLIPTokenizer

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    common = dict(text_encoder=_text_encoder(), tokenizer=tokenizer)
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
            vae=_vae(blocks=2), unet=_unet(in_channels=9), scheduler=_ddim(), **common, **safety
        )
    from diffusers import StableDiffusionPipeline

    # txt2img and img2img share one model: the img2img stage loads a txt2img folder.
    return StableDiffusionPipeline(
        vae=_vae(blocks=2), unet=_unet(in_channels=4), scheduler=_ddim(), **common, **safety
    )


def write_tiny_model(out_dir: str | Path, kind: str) -> Path:
    """Write a tiny model folder for `kind` (safetensors weights) and return its path."""
    out = Path(out_dir)
    pipe = build_tiny_pipeline(kind)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
