"""Full-size SD1.5, SDXL and SDXL-Turbo architectures from their published configs, with random weights.

Same layers and so the same FLOPs as the real models, without downloading them: the GPU
profile of the benchmark measures throughput and share of peak on these. The images are
noise; the arithmetic is the real one.
"""

from __future__ import annotations

from pathlib import Path

# FLOPs (TFLOP) per forward at the native resolution, counted with torch's FlopCounterMode
# (shared/PERF.md): the denoiser, the VAE decoder, the text encoder(s).
FLOPS = {
    "sd15": {"unet": 0.803, "vae_decode": 2.5, "text": 0.013, "size": 512},
    "sdxl": {"unet": 6.76, "vae_decode": 10.5, "text": 0.013 + 0.09, "size": 1024},
    # SDXL's architecture at its distilled size, 512 px; its VAE is SD1.5's at 512.
    "sdxl-turbo": {"unet": 1.589, "vae_decode": 2.5, "text": 0.013 + 0.09, "size": 512},
}
# Generation settings a profile is run at unless the command line says otherwise.
SETTINGS = {"sdxl-turbo": {"steps": 4, "guidance_scale": 0.0}}


def tflop_per_image(profile: str, steps: int, guidance_scale: float) -> float:
    """steps x (2 with guidance, else 1) x U-Net + VAE decode + text encoding."""
    flops = FLOPS[profile]
    passes = 2 if guidance_scale > 1 else 1
    return steps * passes * flops["unet"] + flops["vae_decode"] + passes * flops["text"]


def _clip(hidden: int, layers: int, heads: int, intermediate: int, projection: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.tiny_models import MAX_TOKENS

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        projection_dim=projection,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu" if hidden == 768 else "gelu",
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _vae(scaling_factor: float, size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=size,
        scaling_factor=scaling_factor,
    )


def _scheduler(profile: str):
    from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    if profile == "sdxl-turbo":  # as published: Euler ancestral, trailing timesteps
        return EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
            steps_offset=1,
        )
    return DPMSolverMultistepScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )


def sdxl_unet():
    """SDXL's UNet (also SDXL-Turbo's), from its published config."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def unet_tflop(unet, side: int, context: int, added: dict | None = None) -> float:
    """TFLOP of one forward of a UNet at `side` px (latents side / 8), counted by torch's
    FlopCounterMode. On the meta device it costs no memory and a few seconds."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(unet.parameters()).device
    latents = torch.zeros(1, unet.config.in_channels, side // 8, side // 8, device=device)
    states = torch.zeros(1, 77, context, device=device)
    with FlopCounterMode(display=False) as counter:
        unet(latents, torch.tensor([10], device=device), encoder_hidden_states=states, added_cond_kwargs=added)
    return counter.get_total_flops() / 1e12


def build(profile: str):
    """An in-memory pipeline of the profile's architecture, random weights (seed 0)."""
    import tempfile

    import torch
    from transformers import CLIPTokenizer

    from pipeline.tiny_models import write_tokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    if profile == "sd15":
        from diffusers import StableDiffusionPipeline, UNet2DConditionModel

        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        return StableDiffusionPipeline(
            vae=_vae(0.18215, 512),
            text_encoder=_clip(768, 12, 12, 3072, 768, with_projection=False),
            tokenizer=tokenizer,
            unet=unet,
            scheduler=_scheduler(profile),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    if profile in ("sdxl", "sdxl-turbo"):
        from diffusers import StableDiffusionXLPipeline

        unet = sdxl_unet()
        return StableDiffusionXLPipeline(
            vae=_vae(0.13025, FLOPS[profile]["size"]),
            text_encoder=_clip(768, 12, 12, 3072, 768, with_projection=False),
            text_encoder_2=_clip(1280, 32, 20, 5120, 1280, with_projection=True),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=_scheduler(profile),
        )
    raise ValueError(f"unknown profile {profile!r}: {', '.join(FLOPS)}")


def write_model(out_dir: str | Path, profile: str) -> Path:
    """Save the profile's random-weight pipeline as an ordinary diffusers folder (fp16
    safetensors: half the disk and load time; the stages cast to their dtype)."""
    import torch

    pipe = build(profile).to(torch.float16)
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
