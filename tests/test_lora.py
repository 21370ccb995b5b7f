"""LoRA adapters on a stage (pipeline/lora.py): fused once per actor, or picked per row with
each call running one adapter set; outputs equal diffusers' own LoRA loading."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import job, read_metadata, stage, write_table

from pipeline import batch as B
from pipeline import preflight
from pipeline.io.prepare import RowRules, canonical_batch
from pipeline.keys import stage_seed
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec
from pipeline.stages import WORKERS

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, str]:
    from pipeline.tiny_models import write_tiny_lora

    root = tmp_path_factory.mktemp("loras")
    return {name: str(write_tiny_lora(root / f"{name}.safetensors", seed=seed)) for name, seed in (("a", 1), ("b", 2))}


def base_pipe(model: str):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def with_adapters(model: str, files: dict[str, str], weights: dict[str, float], fuse: bool):
    """diffusers' own LoRA loading, as its documentation shows it."""
    pipe = base_pipe(model)
    for name, file in files.items():
        pipe.load_lora_weights(file, adapter_name=name)
    pipe.set_adapters(list(weights), list(weights.values()))
    if fuse:
        pipe.fuse_lora(adapter_names=list(files))
    return pipe


def image(pipe, prompts, seeds, threads: int | None = None) -> np.ndarray:
    """threads: as many as the stage that made the images (Ray's actors here run one, a GPU
    stage's CPU share): another count sums in another order, which can move a pixel a level."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        out = pipe(prompts, num_inference_steps=2, width=32, height=32, output_type="np",
                   generator=[torch.Generator().manual_seed(seed) for seed in seeds]).images
    finally:
        torch.set_num_threads(before)
    return (out * 255).round().astype("uint8")


def prepared(columns: dict, roles: dict):
    rules = RowRules(job_seed=3, base_dir="/", storage_options={}, id_column=None, roles=roles, overrides={})
    return canonical_batch(pa.table(columns), rules)


def pixels(batch, rows):
    return np.stack([B.image_view(batch[B.IMAGE][r], batch[B.WIDTH][r], batch[B.HEIGHT][r]) for r in rows])


def seeds(batch, rows):
    return [stage_seed(int(batch[B.SEED][r]), 0) for r in rows]


def test_fused_adapters_equal_diffusers_and_weight_zero_is_the_base_model(tiny, adapters):
    batch = prepared({"prompt": ["a red circle", "a blue square"]}, {"prompt": "prompt"})
    loras = [{"path": adapters["a"], "name": "a", "weight": 0.8}, {"path": adapters["b"], "name": "b", "weight": 0.5}]
    out = WORKERS["txt2img"](stage("txt2img", tiny["txt2img"], loras=loras))(batch)
    expected = image(with_adapters(tiny["txt2img"], adapters, {"a": 0.8, "b": 0.5}, fuse=True),
                     list(batch[B.PROMPT]), seeds(batch, [0, 1]))
    assert np.array_equal(pixels(out, [0, 1]), expected)
    base = image(base_pipe(tiny["txt2img"]), list(batch[B.PROMPT]), seeds(batch, [0, 1]))
    assert not np.array_equal(expected, base)  # the adapters change the image
    assert json.loads(out["s0_arguments"][0])["loras"] == {"a": 0.8, "b": 0.5}

    zero = [{"path": adapters["a"], "name": "a", "weight": 0.0}]
    out = WORKERS["txt2img"](stage("txt2img", tiny["txt2img"], loras=zero))(batch)
    assert np.array_equal(pixels(out, [0, 1]), base)


def test_rows_pick_an_adapter_through_the_pipeline(ray_cluster, tiny, adapters, tmp_path):
    prompts = ["a red circle", "a blue square", "a green circle", "a square"]
    table = write_table(tmp_path / "in.parquet", {"prompt": prompts, "lora": ["a", "b", None, "c"]})
    loras = [{"path": adapters["a"], "name": "a", "weight": 1.0}, {"path": adapters["b"], "name": "b", "weight": 0.5}]
    raw = job(table, str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], loras=loras, batch_size=4)])
    with pytest.raises(SpecError, match=r"^stages.0.fuse_loras: rows pick an adapter through column 'lora'"):
        preflight.check_input(parse_spec(raw))
    raw["stages"][0]["fuse_loras"] = False
    run_job(parse_spec(raw))
    rows = {row["prompt"]: row for row in read_metadata(str(tmp_path / "out"))}
    assert rows["a square"]["status"] == "failed"
    assert rows["a square"]["error"] == "stages.0 (txt2img): lora: 'c' is not one of this stage's loras (a, b)"
    pipe = with_adapters(tiny["txt2img"], adapters, {"a": 1.0, "b": 0.5}, fuse=False)
    from PIL import Image

    for prompt, weights in (("a red circle", {"a": 1.0}), ("a blue square", {"b": 0.5}),
                            ("a green circle", {"a": 1.0, "b": 0.5})):
        row = rows[prompt]
        assert row["status"] == "ok", row["error"]
        pipe.set_adapters(list(weights), list(weights.values()))
        expected = image(pipe, [prompt], [row["stages"][0]["seed"]], threads=1)[0]
        assert np.array_equal(np.asarray(Image.open(row["image_uri"]).convert("RGB")), expected), prompt
        assert json.loads(row["stages"][0]["arguments"])["loras"] == weights


def test_adapters_are_safetensors_files_that_exist(tiny, tmp_path):
    raw = job("in.parquet", "out", [stage("txt2img", tiny["txt2img"], loras=[{"path": "x.bin", "name": "x"}])])
    with pytest.raises(SpecError, match=r"stages.0.loras.0.path: 'x.bin' is not a .safetensors file"):
        parse_spec(raw)
    raw["stages"][0]["loras"][0]["path"] = str(tmp_path / "missing.safetensors")
    with pytest.raises(SpecError, match=r"stages.0.loras.0.path: no file .*missing.safetensors"):
        preflight.check_models(parse_spec(raw))
    # bounded: a sparse file over the size limit, and more adapters than a stage may hold
    from pipeline.lora import MAX_LORA_BYTES, MAX_LORAS

    huge = tmp_path / "huge.safetensors"
    with open(huge, "wb") as handle:
        handle.truncate(MAX_LORA_BYTES + 1)
    raw["stages"][0]["loras"][0]["path"] = str(huge)
    with pytest.raises(SpecError, match=r"stages.0.loras.0.path: .* over the 4 GiB"):
        preflight.check_models(parse_spec(raw))
    raw["stages"][0]["loras"] = [{"path": str(huge), "name": f"a{i}"} for i in range(MAX_LORAS + 1)]
    with pytest.raises(SpecError, match=r"stages.0.loras"):
        parse_spec(raw)


def test_an_adapter_on_s3_is_fetched_once_and_gives_the_local_files_output(tiny, adapters, s3):
    bucket, options, fs = s3
    fs.put_file(adapters["a"], f"{bucket}/loras/a.safetensors")
    batch = prepared({"prompt": ["a red circle"]}, {"prompt": "prompt"})
    remote = [{"path": f"{bucket}/loras/a.safetensors", "name": "a", "weight": 0.5}]
    raw = job("in.parquet", "out", [stage("txt2img", tiny["txt2img"], loras=remote)], storage_options=options)
    preflight.check_models(parse_spec(raw))  # the object is there
    out = WORKERS["txt2img"](stage("txt2img", tiny["txt2img"], loras=remote), storage_options=options)(batch)
    local = [{"path": adapters["a"], "name": "a", "weight": 0.5}]
    expected = WORKERS["txt2img"](stage("txt2img", tiny["txt2img"], loras=local))(batch)
    assert np.array_equal(pixels(out, [0]), pixels(expected, [0]))
    raw["stages"][0]["loras"][0]["path"] = f"{bucket}/loras/missing.safetensors"
    with pytest.raises(SpecError, match=r"stages.0.loras.0.path: no object s3://.*missing.safetensors"):
        preflight.check_models(parse_spec(raw))


def test_a_resume_with_an_adapter_rewritten_in_place_is_refused_unless_allowed(tiny, adapters, tmp_path):
    """The adapter's bytes are pinned with the model's revision (models.json): the same path
    with other contents would mix two adapters' images in one output."""
    import shutil


    from pipeline.io.commit_log import CommitLog

    adapter = tmp_path / "style.safetensors"
    shutil.copy(adapters["a"], adapter)
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"]})
    spec = parse_spec(job(table, str(tmp_path / "out"),
                          [stage("txt2img", tiny["txt2img"], loras=[{"path": str(adapter), "name": "style"}])]))
    log = CommitLog.of(spec)
    revisions = preflight.check_models(spec)
    pinned = preflight.adapter_fingerprints(spec)
    assert pinned[0] and pinned == preflight.adapter_fingerprints(spec)
    log.record_job(spec, revisions, [], "first", pinned)
    assert log.check_models(spec, revisions, False, pinned) == []
    log.commit(pa.table({"id": ["x"], "status": ["ok"], "error": [None]}), shard=0)  # a committed row

    shutil.copy(adapters["b"], adapter)  # retrained, saved under the same name
    now = preflight.adapter_fingerprints(spec)
    assert now != pinned
    with pytest.raises(SpecError, match=r"stages.0.loras: the files of this stage's LoRA adapters or ControlNet "
                                        r"changed .*--allow-model-change"):
        log.check_models(spec, revisions, False, now)
    [change] = log.check_models(spec, revisions, True, now)
    assert (change["from"], change["to"]) == (pinned[0], now[0])
