"""Tiny random-weight pipelines of the families beyond SD 1.x/2.x and SDXL (those are in
pipeline/tiny_models.py): Würstchen and Stable Cascade, the transformer denoisers SD3, Flux
and PixArt-Σ, and Kandinsky 2.2. Each builder takes the stage kind and returns an in-memory
pipeline with seed-0 weights, built offline (CLIP and T5 tokenizers written here).
"""

from __future__ import annotations

from pipeline.stages import STAGES
from pipeline.tiny_models import _HIDDEN, MAX_TOKENS, _text_encoder, _tokenizer, _vae


def wuerstchen(kind: str):
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


def t5_tokenizer():
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


def sd3(kind: str):
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
    t5 = t5_encoder()
    tokenizer = _tokenizer()
    pipeline_class = StableDiffusion3InpaintPipeline if STAGES[kind].needs_mask else StableDiffusion3Pipeline
    return pipeline_class(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=_text_encoder(projection=True), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(projection=True), tokenizer_2=tokenizer,
        text_encoder_3=t5, tokenizer_3=t5_tokenizer(),
    )


def t5_encoder():
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=40, d_model=_HIDDEN, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def flux(kind: str):
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
        tokenizer=_tokenizer(), text_encoder_2=t5_encoder(), tokenizer_2=t5_tokenizer(),
    )


def pixart_sigma(kind: str):
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
    return PixArtSigmaPipeline(tokenizer=t5_tokenizer(), text_encoder=t5_encoder(), vae=_vae(blocks=2),
                               transformer=transformer, scheduler=DDIMScheduler())


def kandinsky22(kind: str):
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


def stable_cascade(kind: str):
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
