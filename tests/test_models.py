"""Model resolution: the revision a local folder records, and the node cache of s3 models."""

import os
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import upload_folder

from pipeline.models import cache_root, resolve_model


def test_a_local_model_saved_over_with_same_size_weights_gets_a_new_revision(tiny, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny["txt2img"], folder)
    before = resolve_model(str(folder)).revision
    assert resolve_model(str(folder)).revision == before  # stable while nothing changes
    flip_last_byte(next(folder.glob("unet/*.safetensors")))
    assert resolve_model(str(folder)).revision != before


def flip_last_byte(file: Path) -> None:
    """A fine-tune saved over the old weights: same name, same size, other bytes."""
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))


def test_a_worker_refuses_a_local_model_that_changed_after_the_driver_pinned_it(tiny, tmp_path):
    from pipeline.models import ModelError, check_model_source

    folder = tmp_path / "model"
    shutil.copytree(tiny["txt2img"], folder)
    pinned = check_model_source(str(folder))  # the driver's revision, cheap: no weights read
    assert pinned == resolve_model(str(folder)).revision
    assert resolve_model(str(folder), pinned).revision == pinned
    flip_last_byte(next(folder.glob("unet/*.safetensors")))
    with pytest.raises(ModelError, match=rf"changed after this run pinned it: its files give revision files:\w+, "
                                         rf"the run pinned {pinned}"):
        resolve_model(str(folder), pinned)
    with pytest.raises(ModelError, match="changed after this run pinned it"):
        check_model_source(str(folder), pinned)  # a `files:` revision in a spec pins the files too
    assert check_model_source("synth:shapes") == resolve_model("synth:shapes").revision


def test_a_pinned_s3_model_loads_from_the_node_cache_or_not_at_all(tiny, s3):
    from pipeline.models import ModelError, check_model_source

    bucket, options, fs = s3
    model = f"{bucket}/models/pinned"
    upload_folder(fs, Path(tiny["txt2img"]), model)
    pinned = check_model_source(model, storage_options=options)
    first = resolve_model(model, pinned, storage_options=options)
    assert first.revision == pinned
    # The prefix is overwritten mid-run: a node that holds the pinned files still loads them...
    weights = next(Path(tiny["txt2img"]).glob("unet/*.safetensors"))
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 0xFF
    fs.pipe_file(f"{model}/unet/{weights.name}", bytes(changed))
    assert check_model_source(model, storage_options=options) != pinned
    assert resolve_model(model, pinned, storage_options=options) == first
    # ...and one that would have to download them refuses the other files.
    shutil.rmtree(first.path)
    with pytest.raises(ModelError, match=f"{model} changed after this run pinned it"):
        resolve_model(model, pinned, storage_options=options)
    assert resolve_model(model, storage_options=options).revision != pinned  # unpinned: the new files


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
    assert _local_fingerprint(copy) == resolve_model("synth:shapes").revision
    weights = next(copy.glob("unet/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert _local_fingerprint(copy) != resolve_model("synth:shapes").revision


class _StandInHub(BaseHTTPRequestHandler):
    """Answers the one request preflight sends the hub (HEAD of a repo's model_index.json)
    the way huggingface.co does: the real hub is out of reach here. Its errors travel in
    the X-Error-Code header, which huggingface_hub maps to its exception classes."""

    answers = {
        "/org/pipeline/resolve/main/model_index.json": (200, None),
        "/org/gated/resolve/main/model_index.json": (401, "GatedRepo"),
        "/org/nothing/resolve/main/model_index.json": (401, "RepoNotFound"),
        "/org/pipeline/resolve/v9/model_index.json": (404, "RevisionNotFound"),
        "/org/text-encoder-only/resolve/main/model_index.json": (404, "EntryNotFound"),
    }

    def do_HEAD(self):
        status, error = self.answers.get(self.path, (500, None))
        self.send_response(status)
        if error:
            self.send_header("X-Error-Code", error)
        else:
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", '"abc"')
        self.send_header("Content-Length", "2")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_preflight_tells_gated_missing_and_non_diffusers_hub_repos_apart(tmp_path):
    import subprocess
    import sys
    import threading

    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    code = """
from pipeline.models import ModelError, check_model_source
for model, revision in [("org/pipeline", None), ("org/gated", None), ("org/nothing", None),
                        ("org/pipeline", "v9"), ("org/text-encoder-only", None)]:
    try:
        print(model, "ok", check_model_source(model, revision))
    except ModelError as error:
        print(model, error)
"""
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"),
               PYTHONPATH=str(Path(__file__).parents[1]))  # this checkout's pipeline, from any folder
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
        )
    finally:
        server.shutdown()
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[0] == f"org/pipeline ok {'0' * 40}"  # the commit the hub answers with: the run pins it
    assert lines[1].startswith("org/gated model 'org/gated' is gated") and "accept its terms" in lines[1]
    assert "is not on the Hugging Face hub, or is private" in lines[2]
    assert "has no revision 'v9'" in lines[3]
    assert "has no model_index.json: it is not a diffusers pipeline" in lines[4]


def test_preflight_refuses_an_upscaler_as_a_generator_and_the_other_way_round(tiny):
    from pipeline.models import ModelError, check_model_source

    with pytest.raises(ModelError, match="'synth:shapes' is a StableDiffusionPipeline, not an upscale pipeline"):
        check_model_source("synth:shapes", kind="upscale")
    with pytest.raises(ModelError, match="is an upscaler .*StableDiffusionUpscalePipeline.*; a txt2img stage needs"):
        check_model_source(tiny["upscale"], kind="txt2img")
    check_model_source("synth:shapes", kind="inpaint")
    check_model_source(tiny["upscale"], kind="upscale")
