"""The benchmark's GPU profiles: their FLOPs come from one counting method (torch's
FlopCounterMode on the meta device), and each new architecture's count is checked against
its published parameter count and an independent estimate from its config, so a wrong
config is caught."""

import pytest

from benchmarks.architectures import (
    FLOPS, SETTINGS, TEXT_TOKENS, _clip, cascade_decoder, cascade_prior, cascade_tflop, count_tflop, decoder_steps,
    flux_transformer, flux_vae, sdxl_unet, t5_xxl, tflop_per_image, transformer_tflop, unet_tflop,
)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_sdxl_turbo_profile_counts_its_unet_as_sdxls_was_counted():
    import torch

    with torch.device("meta"):  # the full 2.6B-parameter UNet, without its memory
        unet = sdxl_unet()
    added = {"text_embeds": torch.zeros(1, 1280, device="meta"), "time_ids": torch.zeros(1, 6, device="meta")}
    # The same count reproduces the sdxl profile's figure at 1024 px, and gives turbo's at 512.
    assert unet_tflop(unet, 1024, 2048, added) == pytest.approx(FLOPS["sdxl"]["denoiser"], rel=0.01)
    assert unet_tflop(unet, 512, 2048, added) == pytest.approx(FLOPS["sdxl-turbo"]["denoiser"], rel=0.01)
    turbo = SETTINGS["sdxl-turbo"]
    assert (turbo["steps"], turbo["guidance_scale"]) == (4, 0.0)
    assert tflop_per_image("sdxl-turbo", 4, 0.0) == pytest.approx(4 * 1.589 + 2.5 + 0.103)


def test_the_flux_schnell_profile_counts_a_12b_transformer_as_its_config_predicts():
    import torch

    with torch.device("meta"):
        transformer, t5, vae = flux_transformer(), t5_xxl(), flux_vae()
        clip_l = _clip(768, 12, 12, 3072, 768, with_projection=False)
    # Published: FLUX.1 is "a 12 billion parameter rectified flow transformer"; T5 v1.1 XXL's
    # encoder 4.76B.
    assert 11.8e9 < _params(transformer) < 12.0e9
    assert _params(t5) == pytest.approx(4.76e9, rel=0.01)
    text_tokens = TEXT_TOKENS["flux-schnell"]
    counted = transformer_tflop(transformer, 1024, text_tokens)
    assert counted == pytest.approx(FLOPS["flux-schnell"]["denoiser"], rel=0.01)
    # From the config alone: every one of the 19 double and 38 single blocks applies 12 h^2
    # weights to each of its S tokens (double: q, k, v, out and a 4h MLP per stream; single:
    # q, k, v, the 4h MLP in and the 5h -> h out) and attends over all S: 24 h^2 S + 4 S^2 h
    # FLOPs. The AdaLN modulation and the embedders act on one vector: left out, hence 2%.
    h, tokens = 3072, (1024 // 16) ** 2 + text_tokens
    assert counted == pytest.approx((19 + 38) * (24 * h**2 * tokens + 4 * tokens**2 * h) / 1e12, rel=0.02)
    # T5: 24 layers of q, k, v, o (4096 x 4096) and a gated FFN (3 x 4096 x 10240) per token.
    ids = torch.zeros(1, text_tokens, dtype=torch.long, device="meta")
    t5_counted = count_tflop(lambda: t5(input_ids=ids))
    d = 4096
    t5_estimate = 24 * (2 * (4 * d * d + 3 * d * 10240) * text_tokens + 4 * text_tokens**2 * d) / 1e12
    assert t5_counted == pytest.approx(t5_estimate, rel=0.02)
    clip_counted = count_tflop(lambda: clip_l(input_ids=torch.zeros(1, 77, dtype=torch.long, device="meta")))
    assert clip_counted + t5_counted == pytest.approx(FLOPS["flux-schnell"]["text"], rel=0.01)
    vae_counted = count_tflop(lambda: vae.decode(torch.zeros(1, 16, 128, 128, device="meta")))
    assert vae_counted == pytest.approx(FLOPS["flux-schnell"]["vae_decode"], rel=0.01)
    # SDXL's VAE decoder differs only in its 16 input channels: nearly SDXL's 10.5 TFLOP.
    assert vae_counted == pytest.approx(FLOPS["sdxl"]["vae_decode"], rel=0.02)
    # Guidance is an embedding (absent in schnell), never a second pass.
    assert SETTINGS["flux-schnell"] == {"steps": 4, "guidance_scale": 0.0}
    assert tflop_per_image("flux-schnell", 4, 3.5) == tflop_per_image("flux-schnell", 4, 0.0)
    assert tflop_per_image("flux-schnell", 4, 0.0) == pytest.approx(4 * 74.385 + 10.472 + 0.013 + 4.845)


def test_the_stable_cascade_profile_counts_prior_decoder_and_vqgan_as_their_configs_predict():
    import torch
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel

    with torch.device("meta"):
        prior, decoder, vqgan = cascade_prior(), cascade_decoder(), PaellaVQModel().eval()
        big_g = _clip(1280, 32, 20, 5120, 1280, with_projection=True)
    # Published (the model card): stage C 3.6B parameters, stage B (large) 1.5B.
    assert _params(prior) == pytest.approx(3.6e9, rel=0.02)
    assert _params(decoder) == pytest.approx(1.5e9, rel=0.05)
    counted = cascade_tflop(prior, decoder, vqgan, 1024)
    for part in ("prior", "denoiser", "vae_decode"):
        assert counted[part] == pytest.approx(FLOPS["stable-cascade"][part], rel=0.01), part
    # From the configs: each block's weights act on every latent position of its level
    # (2 x parameters x positions) plus self-attention over them. The mappers that act on
    # the few conditioning tokens are counted as if on every position: an overestimate of
    # up to 10%.
    # Prior: 64 blocks at 2048 channels on 24x24 positions, attending to them and 85 text
    # and image tokens.
    positions = 24 * 24
    prior_estimate = 2 * _params(prior) * positions + 64 * 4 * positions * (positions + 85) * 2048
    assert prior_estimate / 1e12 == pytest.approx(counted["prior"], rel=0.10)
    # Decoder: 256x256 latents in 2x2 patches, levels of 128^2, 64^2, 32^2 and 16^2
    # positions; the up path runs its deepest-first levels 3, 3, 2 and 2 times (its repeat
    # mappers), attention (20 heads) at the two deepest levels only.
    level_positions = [(128 >> level) ** 2 for level in range(4)]
    down = sum(2 * _params(block) * level_positions[level] for level, block in enumerate(decoder.down_blocks))
    up = sum(2 * _params(block) * level_positions[3 - j] * runs
             for j, (block, runs) in enumerate(zip(decoder.up_blocks, (3, 3, 2, 2))))
    attention = sum(blocks * 4 * n * (n + 4) * 1280 for blocks, n in ((28 + 28 * 3, 32 * 32), (6 + 6 * 3, 16 * 16)))
    assert (down + up + attention) / 1e12 == pytest.approx(counted["denoiser"], rel=0.10)
    text = count_tflop(lambda: big_g(input_ids=torch.zeros(1, 77, dtype=torch.long, device="meta")))
    assert text == pytest.approx(FLOPS["stable-cascade"]["text"], rel=0.01)
    # The stage's steps and guidance are the prior's (guided: 2 passes, and the negative
    # prompt encoded too); the decoder runs its family's fixed steps unguided.
    assert SETTINGS["stable-cascade"] == {"steps": 20, "guidance_scale": 4.0}
    steps = decoder_steps("stable-cascade")
    assert tflop_per_image("stable-cascade", 20, 4.0) == pytest.approx(
        20 * 2 * 4.078 + steps * 6.174 + 2.172 + 3 * 0.098)
