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
    if family == "wuerstchen":
        return _wuerstchen()
    if family == "stable-cascade":
        return _stable_cascade()
    if family == "sd3":
        return _sd3(kind)
    if family == "flux":
        return _flux()
    if family == "pixart-sigma":
        return _pixart_sigma()
    if family == "kandinsky22":
        return _kandinsky22()
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


def _wuerstchen():
    """Würstchen's three parts, tiny: a prior on 2 latent channels, a one-level decoder and a
    VQGAN, with this module's CLIP text encoder for both prior and decoder. Its combined
    pipeline; saved, it reloads only through pipeline.models' register_moved_classes."""
    import torch
    from diffusers import DDPMWuerstchenScheduler, WuerstchenCombinedPipeline
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel, WuerstchenDiffNeXt, WuerstchenPrior

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    prior = WuerstchenPrior(c_in=2, c=8, depth=2, c_cond=_HIDDEN, c_r=8, nhead=2)
    torch.manual_seed(0)
    vqgan = PaellaVQModel(bottleneck_blocks=1, num_vq_embeddings=2)
    torch.manual_seed(0)
    decoder = WuerstchenDiffNeXt(c_cond=_HIDDEN, c_hidden=[32], nhead=[-1], blocks=[2], level_config=["CT"],
                                 clip_embd=_HIDDEN, inject_effnet=[False])
    return WuerstchenCombinedPipeline(
        tokenizer=tokenizer, text_encoder=_text_encoder(), decoder=decoder, scheduler=DDPMWuerstchenScheduler(),
        vqgan=vqgan, prior_tokenizer=tokenizer, prior_text_encoder=_text_encoder(), prior_prior=prior,
        prior_scheduler=DDPMWuerstchenScheduler(),
    )


def _t5_tokenizer():
    """A T5 tokenizer from a small written vocabulary: SentencePiece's word marker, lower-case
    letters and digits as unigram pieces (anything else is <unk>), and </s> after the text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "\u2581", *"abcdefghijklmnopqrstuvwxyz0123456789"]
    tokenizer = Tokenizer(models.Unigram([(piece, 0.0 if i < 3 else -1.0) for i, piece in enumerate(pieces)], unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           extra_ids=0, model_max_length=MAX_TOKENS)


def _sd3(kind: str):
    """SD3's parts, tiny: an MMDiT transformer on 16 latent channels (as SD3's VAE has, which
    its inpaint pipeline needs), two CLIP encoders with projection, and a T5 encoder."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3InpaintPipeline, StableDiffusion3Pipeline)

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=16, out_channels=16, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=_HIDDEN, joint_attention_dim=_HIDDEN,
        pooled_projection_dim=2 * _HIDDEN,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 32], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=16, norm_num_groups=32, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    t5 = _t5_encoder()
    tokenizer = _tokenizer()
    pipeline_class = StableDiffusion3InpaintPipeline if STAGES[kind].needs_mask else StableDiffusion3Pipeline
    return pipeline_class(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=_text_encoder(projection=True), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(projection=True), tokenizer_2=tokenizer,
        text_encoder_3=t5, tokenizer_3=_t5_tokenizer(),
    )


def _t5_encoder():
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=40, d_model=_HIDDEN, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _flux():
    """FLUX.1's parts, tiny: a transformer with a guidance embedding (as dev has) on 2x2-packed
    4-channel latents, a CLIP encoder for the pooled prompt, and T5. Its img2img and inpaint
    pipelines load the same folder."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=_HIDDEN, pooled_projection_dim=_HIDDEN, axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 32], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=32, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_text_encoder(),
        tokenizer=_tokenizer(), text_encoder_2=_t5_encoder(), tokenizer_2=_t5_tokenizer(),
    )


def _pixart_sigma():
    """PixArt-Σ's parts, tiny: a DiT with learned variance (8 output channels for 4 latent
    ones) on T5 embeddings, and this module's VAE."""
    import torch
    from diffusers import DDIMScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=_HIDDEN, in_channels=4, cross_attention_dim=24, out_channels=8, attention_bias=True,
        activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6,
    )
    return PixArtSigmaPipeline(tokenizer=_t5_tokenizer(), text_encoder=_t5_encoder(), vae=_vae(blocks=2),
                               transformer=transformer, scheduler=DDIMScheduler())


def _kandinsky22():
    """Kandinsky 2.2's parts, tiny: a prior transformer from CLIP text to CLIP image
    embeddings (with a 32 px CLIP vision encoder for its empty-image embedding), a UNet
    decoder conditioned on image embeddings (learned variance: 8 output channels), MoVQ."""
    import torch
    from diffusers import (DDIMScheduler, KandinskyV22CombinedPipeline, PriorTransformer, UnCLIPScheduler,
                           UNet2DConditionModel, VQModel)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=_HIDDEN, num_layers=1)
    # clip_std is 0 at initialisation, which would make every image embedding 0.
    prior.clip_std = torch.nn.Parameter(torch.ones(prior.clip_std.shape))
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=_HIDDEN, image_size=32, projection_dim=_HIDDEN, intermediate_size=37, num_attention_heads=4,
        num_channels=3, num_hidden_layers=2, patch_size=8,
    ))
    image_processor = CLIPImageProcessor(
        crop_size=32, do_center_crop=True, do_normalize=True, do_resize=True, resample=3, size=32,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="image", block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", encoder_hid_dim=_HIDDEN, encoder_hid_dim_type="image_proj",
        cross_attention_dim=_HIDDEN, attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None,
    )
    torch.manual_seed(0)
    movq = VQModel(
        block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"], in_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial", num_vq_embeddings=12,
        out_channels=3, up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"], vq_embed_dim=4,
    )
    return KandinskyV22CombinedPipeline(
        unet=unet, movq=movq, prior_prior=prior, prior_image_encoder=image_encoder,
        prior_text_encoder=_text_encoder(projection=True), prior_tokenizer=_tokenizer(),
        prior_image_processor=image_processor,
        scheduler=DDIMScheduler(beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1),
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True,
                                        clip_sample_range=10.0),
    )


def _stable_cascade():
    """Stable Cascade's parts, tiny: a prior and a decoder StableCascadeUNet (the decoder fed
    the prior's 16-channel output), Würstchen's VQGAN, and CLIP text encoders with their
    projection. Eval mode, as loading gives: the UNets have dropout."""
    import torch
    from diffusers import DDPMWuerstchenScheduler, StableCascadeCombinedPipeline
    from diffusers.models import StableCascadeUNet
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel

    tokenizer = _tokenizer()
    torch.manual_seed(0)
    prior = StableCascadeUNet(
        conditioning_dim=_HIDDEN, block_out_channels=(32, 32), num_attention_heads=(2, 2),
        down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), clip_image_in_channels=_HIDDEN,
        switch_level=(False,), clip_text_in_channels=_HIDDEN, clip_text_pooled_in_channels=_HIDDEN,
    )
    torch.manual_seed(0)
    decoder = StableCascadeUNet(
        in_channels=4, out_channels=4, conditioning_dim=_HIDDEN, block_out_channels=(16, 32),
        num_attention_heads=(-1, 2), down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1),
        down_blocks_repeat_mappers=(1, 1), up_blocks_repeat_mappers=(1, 1),
        block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock"),
                               ("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock")),
        switch_level=None, clip_text_pooled_in_channels=_HIDDEN, dropout=(0.1, 0.1), effnet_in_channels=16,
        pixel_mapper_in_channels=3,
    )
    torch.manual_seed(0)
    vqgan = PaellaVQModel(bottleneck_blocks=1, num_vq_embeddings=2)
    pipe = StableCascadeCombinedPipeline(
        tokenizer=tokenizer, text_encoder=_text_encoder(projection=True), decoder=decoder,
        scheduler=DDPMWuerstchenScheduler(), vqgan=vqgan, prior_tokenizer=tokenizer,
        prior_text_encoder=_text_encoder(projection=True), prior_prior=prior, prior_scheduler=DDPMWuerstchenScheduler(),
        prior_feature_extractor=None, prior_image_encoder=None,
    )
    for component in pipe.components.values():
        if hasattr(component, "eval"):
            component.eval()
    return pipe


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
