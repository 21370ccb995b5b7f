"""ControlNet on a stage: a conditioning image per row (read as images are), its scale per
stage and per row; outputs equal diffusers' ControlNet pipelines, and scale 0 is the base
model exactly."""

import io
import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import job, png_bytes, read_metadata, stage, write_table

from pipeline import batch as B
from pipeline import preflight
from pipeline.io.prepare import RowRules, canonical_batch
from pipeline.keys import stage_seed
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec
from pipeline.stages import WORKERS

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def controlnet(tmp_path_factory) -> str:
    from pipeline.tiny_models import write_tiny_controlnet

    return str(write_tiny_controlnet(tmp_path_factory.mktemp("controlnet") / "sd"))


def noise_png(seed: int, size=(32, 32)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype("uint8")
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")


def direct(pipeline_class: str, model: str, seed: int, controlnet: str | None = None, threads: int | None = None,
           **arguments) -> np.ndarray:
    """diffusers' own call; threads: as many as the stage that made the image ran (Ray's
    actors here run one), since another count can move a pixel by a rounding level."""
    import diffusers

    extra = {"controlnet": diffusers.ControlNetModel.from_pretrained(controlnet)} if controlnet else {}
    pipe = getattr(diffusers, pipeline_class).from_pretrained(model, **extra)
    pipe.set_progress_bar_config(disable=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        images = pipe(generator=[torch.Generator().manual_seed(seed)], output_type="np", **arguments).images
    finally:
        torch.set_num_threads(before)
    return (images[0] * 255).round().astype("uint8")


def test_controlnet_through_the_pipeline_with_a_per_row_scale(ray_cluster, tiny, controlnet, tmp_path):
    from PIL import Image

    controls = [noise_png(1), noise_png(2)]
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle", "a blue square"], "control_image": controls,
                                                  "controlnet_conditioning_scale": [None, 0.0]})
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], controlnet=controlnet,
                                                   controlnet_conditioning_scale=0.7, batch_size=1)])
    run_job(parse_spec(raw))
    rows = {row["prompt"]: row for row in read_metadata(str(tmp_path / "out"))}
    steered, plain = rows["a red circle"], rows["a blue square"]
    assert steered["status"] == plain["status"] == "ok", (steered["error"], plain["error"])
    expected = direct("AutoPipelineForText2Image", tiny["txt2img"], steered["stages"][0]["seed"], controlnet, threads=1,
                      prompt=["a red circle"], image=[decoded(controls[0])], controlnet_conditioning_scale=0.7,
                      num_inference_steps=2, width=32, height=32)
    assert np.array_equal(np.asarray(Image.open(steered["image_uri"]).convert("RGB")), expected)
    # Scale 0: the base model's image, exactly.
    base = direct("AutoPipelineForText2Image", tiny["txt2img"], plain["stages"][0]["seed"], threads=1,
                  prompt=["a blue square"], num_inference_steps=2, width=32, height=32)
    assert np.array_equal(np.asarray(Image.open(plain["image_uri"]).convert("RGB")), base)
    scales = [json.loads(row["stages"][0]["arguments"])["controlnet_conditioning_scale"] for row in (steered, plain)]
    assert scales == [0.7, 0.0]


def test_img2img_with_a_controlnet_equals_diffusers_and_an_empty_control_cell_fails_its_row(tiny, controlnet):
    rules = RowRules(job_seed=3, base_dir="/", storage_options={}, id_column=None,
                     roles={"prompt": "prompt", "image": "image", "control_image": "control_image"}, overrides={})
    batch = canonical_batch(pa.table({"prompt": ["a", "b"], "image": [png_bytes(size=(64, 32))] * 2,
                                      "control_image": [noise_png(3, size=(48, 48)), None]}), rules)
    worker = WORKERS["img2img"](stage("img2img", tiny["img2img"], controlnet=controlnet, strength=0.5, steps=4,
                                      width=32))
    out = worker(batch)
    assert list(out[B.STATUS]) == ["ok", "failed"]
    assert out[B.ERROR][1] == "control_image: the 'control_image' cell is empty"  # read as an image cell is
    # The input goes to 32x16 (width 32, its aspect kept); the control image to the same.
    from PIL import Image

    expected = direct("AutoPipelineForImage2Image", tiny["img2img"], stage_seed(int(batch[B.SEED][0]), 0), controlnet,
                      prompt=["a"], image=[decoded(png_bytes(size=(64, 32))).resize((32, 16), Image.LANCZOS)],
                      control_image=[decoded(noise_png(3, size=(48, 48))).resize((32, 16), Image.LANCZOS)],
                      strength=0.5, num_inference_steps=4, controlnet_conditioning_scale=1.0)
    assert np.array_equal(B.image_view(out[B.IMAGE][0], out[B.WIDTH][0], out[B.HEIGHT][0]), expected)


def test_controlnet_fields_are_checked_before_any_gpu(tiny, tmp_path):
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a"]})
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], controlnet_conditioning_scale=0.5)])
    with pytest.raises(SpecError, match=r"stages.0.controlnet_conditioning_scale: applies only to a stage with a "
                                        r"controlnet"):
        parse_spec(raw)
    raw["stages"][0]["controlnet"] = str(tmp_path / "nowhere")
    spec = parse_spec(raw)
    with pytest.raises(SpecError, match=r"^input.columns.control_image: column 'control_image' is not in the input "
                                        r"table \(stages.0 \(txt2img\) conditions its controlnet on it\)"):
        preflight.check_input(spec)
    with pytest.raises(SpecError, match=r"^stages.0.controlnet: no diffusers ControlNet at .*nowhere"):
        preflight.check_models(spec)
