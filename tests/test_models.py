"""Model resolution: the revision a local folder records, and the node cache of s3 models."""

import os
import shutil
from pathlib import Path

import pytest
from conftest import upload_folder

from pipeline.models import cache_root, resolve_model


def test_a_local_model_saved_over_with_same_size_weights_gets_a_new_revision(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny["txt2img"], folder)
    before = resolve_model(str(folder)).revision
    assert resolve_model(str(folder)).revision == before  # stable while nothing changes
    weights = next(folder.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a fine-tune saved over the old file: same name, same size
    weights.write_bytes(bytes(data))
    assert resolve_model(str(folder)).revision != before


def test_a_failed_s3_model_download_leaves_no_partial_folder(tiny, s3):
    bucket, options, fs = s3
    model = f"{bucket}/models/broken"
    upload_folder(fs, Path(tiny["txt2img"]), model)
    # A key S3 accepts but no local file system can hold (a 300-character name), so the
    # download fails partway, after other files were written.
    fs.pipe_file(f"{model}/unet/{'x' * 300}.json", b"{}")
    with pytest.raises(OSError):
        resolve_model(model, storage_options=options)
    assert not list((cache_root() / "models").glob("*.partial-*"))


def test_a_partial_download_left_by_a_killed_process_is_removed(tiny, s3):
    bucket, options, fs = s3
    model = f"{bucket}/models/txt2img"
    upload_folder(fs, Path(tiny["txt2img"]), model)
    target = Path(resolve_model(model, storage_options=options).path)
    shutil.rmtree(target)
    stale = Path(f"{target}.partial-4242")  # as a SIGKILLed process leaves it
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "half.safetensors").write_bytes(b"\0" * 1000)
    again = resolve_model(model, storage_options=options)
    assert Path(again.path) == target and (target / "model_index.json").is_file()
    assert not stale.exists()


def test_a_missing_relative_folder_is_reported_as_neither_hub_id_nor_folder(tmp_path):
    import subprocess
    import sys

    # "models/sd15" reads as a hub id too; offline, so the hub lookup fails at once.
    code = "from pipeline.models import check_model_source; check_model_source('models/sd15')"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert f"nor is there a local folder {tmp_path / 'models' / 'sd15'}" in result.stderr


def test_an_s3_model_that_ships_pickles_beside_safetensors_loads_without_them(tiny, s3):
    from pipeline.models import ModelError, check_model_source

    bucket, options, fs = s3
    model = f"{bucket}/models/mirror"
    upload_folder(fs, Path(tiny["txt2img"]), model)
    fs.pipe_file(f"{model}/unet/diffusion_pytorch_model.bin", b"not unpickled")  # as hub repos ship
    check_model_source(model, storage_options=options)
    folder = Path(resolve_model(model, storage_options=options).path)
    assert (folder / "unet").is_dir() and not list(folder.rglob("*.bin"))

    for weights in fs.glob(f"{model}/unet/*.safetensors"):
        # now the unet's only safetensors is an fp16 variant, which the download skips
        fs.mv(weights, weights.replace(".safetensors", ".fp16.safetensors"))
    with pytest.raises(ModelError, match="unet has only pickle weights"):
        check_model_source(model, storage_options=options)


def test_the_built_in_model_revision_follows_its_bytes_not_its_file_times(tmp_path):
    from pipeline.models import _local_fingerprint, builtin_folder

    copy = tmp_path / "shapes"
    shutil.copytree(builtin_folder("synth:shapes"), copy)  # new modification times, as on another node
    assert _local_fingerprint(copy, every_byte=True) == resolve_model("synth:shapes").revision
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert _local_fingerprint(copy, every_byte=True) != resolve_model("synth:shapes").revision
