"""Full-size SD1.5, SDXL, SDXL-Turbo, FLUX.1-schnell and Stable Cascade architectures from
their published configs, with random weights.

Same layers and so the same FLOPs as the real models, without downloading them: the GPU
profile of the benchmark measures throughput and share of peak on these. The images are
noise; the arithmetic is the real one.
"""

from __future__ import annotations

from pathlib import Path

# TFLOP per forward at the profile's native resolution, counted with torch's FlopCounterMode
# on the meta device (shared/PERF.md; tests/test_architectures.py recounts them): the
# denoiser (a U-Net, or Flux's transformer), the image decoder (VAE, or Stable Cascade's
# VQGAN), the text encoder(s).
FLOPS = {
    "sd15": {"denoiser": 0.803, "vae_decode": 2.5, "text": 0.013, "size": 512},
    "sdxl": {"denoiser": 6.76, "vae_decode": 10.5, "text": 0.013 + 0.09, "size": 1024},
    # SDXL's architecture at its distilled size, 512 px; its VAE is SD1.5's at 512.
    "sdxl-turbo": {"denoiser": 1.589, "vae_decode": 2.5, "text": 0.013 + 0.09, "size": 512},
    # 4,096 image tokens (128x128 latents in 2x2 patches) and 512 T5 tokens: FluxPipeline's
    # default max_sequence_length, which synth does not change (schnell's reference code
    # uses 256). Guidance is an embedding (absent in schnell), never a second pass.
    "flux-schnell": {"denoiser": 74.385, "vae_decode": 10.472, "text": 0.013 + 4.845, "size": 1024,
                     "guided": False},
    # Prior (stage C) on 24x24 latents, then decoder (stage B) on 256x256, the VQGAN (stage A)
    # decoding 4x; the stage's steps and guidance are the prior's. Text: CLIP bigG.
    "stable-cascade": {"prior": 4.078, "denoiser": 6.174, "vae_decode": 2.172, "text": 0.098, "size": 1024},
}
TEXT_TOKENS = {"flux-schnell": 512}
# Generation settings a profile is run at unless the command line says otherwise.
SETTINGS = {
    "sdxl-turbo": {"steps": 4, "guidance_scale": 0.0},
    "flux-schnell": {"steps": 4, "guidance_scale": 0.0},  # FLUX.1-schnell's model card
    # Stable Cascade's model card: prior 20 steps at guidance 4 (decoder: 10 steps, guidance
    # 0; synth's stable-cascade family runs the decoder at its fixed steps, read below).
    "stable-cascade": {"steps": 20, "guidance_scale": 4.0},
}


def decoder_steps(profile: str) -> int:
    """The steps a two-stage family's decoder runs at: what its family passes (pipeline/families.py)."""
    from pipeline.families import FAMILIES

    return FAMILIES[profile].fixed["num_inference_steps"]


def tflop_per_image(profile: str, steps: int, guidance_scale: float) -> float:
    """steps x (2 with guidance, else 1) x denoiser + image decode + text encoding. Stable
    Cascade: the steps and guidance are its prior's, and its decoder adds its own steps,
    unguided, with one more text encoding."""
    flops = FLOPS[profile]
    passes = 2 if guidance_scale > 1 and flops.get("guided", True) else 1
    if "prior" in flops:
        return (steps * passes * flops["prior"] + decoder_steps(profile) * flops["denoiser"] + flops["vae_decode"]
                + (passes + 1) * flops["text"])
    return steps * passes * flops["denoiser"] + flops["vae_decode"] + passes * flops["text"]


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


def count_tflop(forward) -> float:
    """TFLOP of `forward()` as torch's FlopCounterMode counts it: matrix products and
    convolutions, attention included (on the meta device it runs as batched products)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops() / 1e12


def unet_tflop(unet, side: int, context: int, added: dict | None = None) -> float:
    """TFLOP of one forward of a UNet at `side` px (latents side / 8). On the meta device it
    costs no memory and a few seconds."""
    import torch

    device = next(unet.parameters()).device
    latents = torch.zeros(1, unet.config.in_channels, side // 8, side // 8, device=device)
    states = torch.zeros(1, 77, context, device=device)
    return count_tflop(lambda: unet(latents, torch.tensor([10], device=device), encoder_hidden_states=states,
                                    added_cond_kwargs=added))


# FLUX.1-schnell, from Black Forest Labs' reference code (github.com/black-forest-labs/flux,
# src/flux/util.py, configs["flux-schnell"]): hidden 3072, 24 heads, 19 double-stream and 38
# single-stream blocks, 64 input channels (16 latent channels in 2x2 patches), context 4096
# (T5-XXL), pooled 768 (CLIP-L), rope axes (16, 56, 56), no guidance embedding. These are
# FluxTransformer2DModel's defaults, which diffusers' scripts/convert_flux_to_diffusers.py
# relies on. Its autoencoder: ch 128, ch_mult (1, 2, 4, 4), 2 res blocks, 16 latent
# channels, scale 0.3611, shift 0.1159, no quant convs.
def flux_transformer():
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False,
        axes_dims_rope=(16, 56, 56),
    )


def flux_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=16, sample_size=1024,
        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    )


def t5_xxl():
    """T5 v1.1 XXL's encoder (google/t5-v1_1-xxl: d_model 4096, 64 heads of 64, 24 layers,
    gated-GELU feed-forward of 10240, vocabulary 32128), Flux's and SD3's text encoder."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True, tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))


def transformer_tflop(transformer, side: int, text_tokens: int) -> float:
    """TFLOP of one forward of Flux's transformer at `side` px: (side/16)^2 image tokens
    (latents at side/8, packed 2x2) beside `text_tokens` T5 tokens."""
    import torch

    device = next(transformer.parameters()).device
    image_tokens = (side // 16) ** 2
    config = transformer.config
    inputs = dict(
        hidden_states=torch.zeros(1, image_tokens, config.in_channels, device=device),
        encoder_hidden_states=torch.zeros(1, text_tokens, config.joint_attention_dim, device=device),
        pooled_projections=torch.zeros(1, config.pooled_projection_dim, device=device),
        timestep=torch.zeros(1, device=device),
        img_ids=torch.zeros(image_tokens, 3, device=device),
        txt_ids=torch.zeros(text_tokens, 3, device=device),
    )
    return count_tflop(lambda: transformer(**inputs))


# Stable Cascade, from diffusers' scripts/convert_stable_cascade.py (the script that made the
# hub's stabilityai/stable-cascade and -prior folders): stage C, the prior (3.6B), and stage
# B, the decoder (the large 1.5B one); stage A is Würstchen v2's VQGAN (warp-ai/wuerstchen
# vqgan, PaellaVQModel's defaults) and the text encoder CLIP ViT-bigG/14 with its projection.
def cascade_prior():
    from diffusers.models import StableCascadeUNet

    return StableCascadeUNet(
        in_channels=16, out_channels=16, timestep_ratio_embedding_dim=64, patch_size=1, conditioning_dim=2048,
        block_out_channels=(2048, 2048), num_attention_heads=(32, 32), down_num_layers_per_block=(8, 24),
        up_num_layers_per_block=(24, 8), down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2,
        clip_text_in_channels=1280, clip_text_pooled_in_channels=1280, clip_image_in_channels=768, clip_seq=4,
        kernel_size=3, dropout=(0.1, 0.1), self_attn=True, timestep_conditioning_type=("sca", "crp"),
        switch_level=(False,),
    ).eval()


def cascade_decoder():
    from diffusers.models import StableCascadeUNet

    return StableCascadeUNet(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=64, patch_size=2, conditioning_dim=1280,
        block_out_channels=(320, 640, 1280, 1280), down_num_layers_per_block=(2, 6, 28, 6),
        up_num_layers_per_block=(6, 28, 6, 2), down_blocks_repeat_mappers=(1, 1, 1, 1),
        up_blocks_repeat_mappers=(3, 3, 2, 2), num_attention_heads=(0, 0, 20, 20),
        block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock"),) * 2
        + (("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2,
        clip_text_pooled_in_channels=1280, clip_seq=4, effnet_in_channels=16, pixel_mapper_in_channels=3,
        kernel_size=3, dropout=(0, 0, 0.1, 0.1), self_attn=True, timestep_conditioning_type=("sca",),
    ).eval()


def cascade_tflop(prior, decoder, vqgan, side: int) -> dict:
    """TFLOP of one forward of Stable Cascade's prior, its decoder and its VQGAN decode at
    `side` px, at the latent sizes its pipelines use (the prior's side/42.67 rounded up,
    the decoder's 10.67x that, the VQGAN 4x)."""
    import math

    import torch

    device = next(prior.parameters()).device
    prior_side = math.ceil(side / 42.67)
    decoder_side = int(prior_side * 10.67)
    pooled = torch.zeros(1, 1, 1280, device=device)
    ratio = torch.zeros(1, device=device)
    return {
        "prior": count_tflop(lambda: prior(
            sample=torch.zeros(1, 16, prior_side, prior_side, device=device), timestep_ratio=ratio,
            clip_text_pooled=pooled, clip_text=torch.zeros(1, 77, 1280, device=device),
            clip_img=torch.zeros(1, 1, 768, device=device))),
        "denoiser": count_tflop(lambda: decoder(
            sample=torch.zeros(1, 4, decoder_side, decoder_side, device=device), timestep_ratio=ratio,
            clip_text_pooled=pooled, effnet=torch.zeros(1, 16, prior_side, prior_side, device=device))),
        "vae_decode": count_tflop(lambda: vqgan.decode(torch.zeros(1, 4, decoder_side, decoder_side, device=device))),
    }


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
    if profile == "flux-schnell":
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        from pipeline.tiny_families import t5_tokenizer

        t5_tok = t5_tokenizer()
        t5_tok.model_max_length = TEXT_TOKENS[profile]
        return FluxPipeline(
            transformer=flux_transformer(),
            # FLUX.1-schnell's scheduler config: shift 1, no resolution-dependent shift
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False),
            vae=flux_vae(),
            text_encoder=_clip(768, 12, 12, 3072, 768, with_projection=False),
            tokenizer=tokenizer,
            text_encoder_2=t5_xxl(),
            tokenizer_2=t5_tok,
        )
    if profile == "stable-cascade":
        from diffusers import DDPMWuerstchenScheduler, StableCascadeCombinedPipeline
        from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel

        text_encoder = _clip(1280, 32, 20, 5120, 1280, with_projection=True)
        return StableCascadeCombinedPipeline(
            tokenizer=tokenizer, text_encoder=text_encoder, decoder=cascade_decoder(),
            scheduler=DDPMWuerstchenScheduler(), vqgan=PaellaVQModel().eval(), prior_tokenizer=tokenizer,
            prior_text_encoder=text_encoder, prior_prior=cascade_prior(), prior_scheduler=DDPMWuerstchenScheduler(),
            prior_feature_extractor=None, prior_image_encoder=None,
        )
    raise ValueError(f"unknown profile {profile!r}: {', '.join(FLOPS)}")


def write_model(out_dir: str | Path, profile: str) -> Path:
    """Save the profile's random-weight pipeline as an ordinary diffusers folder (fp16
    safetensors: half the disk and load time; the stages cast to their dtype). Built in fp16
    from the start: Flux's 17B parameters (transformer and T5) would need 68 GB in fp32."""
    import torch

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        pipe = build(profile).to(torch.float16)
    finally:
        torch.set_default_dtype(default)
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out
