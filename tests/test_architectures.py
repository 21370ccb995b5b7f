"""The benchmark's GPU profiles: their FLOPs come from one counting method."""

import pytest

from benchmarks.architectures import FLOPS, SETTINGS, sdxl_unet, tflop_per_image, unet_tflop


def test_the_sdxl_turbo_profile_counts_its_unet_as_sdxls_was_counted():
    import torch

    with torch.device("meta"):  # the full 2.6B-parameter UNet, without its memory
        unet = sdxl_unet()
    added = {"text_embeds": torch.zeros(1, 1280, device="meta"), "time_ids": torch.zeros(1, 6, device="meta")}
    # The same count reproduces the sdxl profile's figure at 1024 px, and gives turbo's at 512.
    assert unet_tflop(unet, 1024, 2048, added) == pytest.approx(FLOPS["sdxl"]["unet"], rel=0.01)
    assert unet_tflop(unet, 512, 2048, added) == pytest.approx(FLOPS["sdxl-turbo"]["unet"], rel=0.01)
    turbo = SETTINGS["sdxl-turbo"]
    assert (turbo["steps"], turbo["guidance_scale"]) == (4, 0.0)
    assert tflop_per_image("sdxl-turbo", 4, 0.0) == pytest.approx(4 * 1.589 + 2.5 + 0.103)
