"""Object storage through a real S3 server on loopback (moto's ThreadedMotoServer)."""

import hashlib

import pytest
from conftest import job, png_bytes, read_metadata, stage, upload_folder, write_table

from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(300)


def test_prompts_and_model_from_s3_outputs_to_s3(ray_cluster, tiny, s3, tmp_path):
    import os
    from pathlib import Path

    bucket, options, fs = s3
    cache = Path(os.environ["SYNTH_CACHE"]) / "models"
    before = set(cache.glob("*/model_index.json"))
    upload_folder(fs, Path(tiny["txt2img"]), f"{bucket}/models/txt2img")
    prompts = [f"prompt {i}" for i in range(5)]
    write_table(f"{bucket}/in/prompts.parquet", {"prompt": prompts}, options)
    raw = job(
        f"{bucket}/in/*.parquet",
        f"{bucket}/out",
        [stage("txt2img", f"{bucket}/models/txt2img")],
        storage_options=options,
    )
    summary = run_job(parse_spec(raw))
    assert (summary.rows_ok, summary.rows_failed) == (5, 0)

    rows = read_metadata(f"{bucket}/out", options)
    assert sorted(row["prompt"] for row in rows) == prompts  # one metadata row per input row
    for row in rows:
        assert row["image_uri"].startswith(f"{bucket}/out/images/")
        assert hashlib.sha256(fs.cat_file(row["image_uri"])).hexdigest() == row["sha256"]
        assert row["stages"][0]["model"] == f"{bucket}/models/txt2img"
    assert len(fs.find(f"{bucket}/out/images")) == 5  # one image per row
    assert fs.exists(f"{bucket}/out/job.json")
    assert "secret" not in fs.cat_file(f"{bucket}/out/job.json").decode().lower()
    # the model was downloaded once into this node's cache
    assert len(set(cache.glob("*/model_index.json")) - before) == 1


def test_images_fetched_from_s3_uris(ray_cluster, tiny, s3, tmp_path):
    bucket, options, fs = s3
    fs.pipe_file(f"{bucket}/img/a.png", png_bytes((10, 200, 10)))
    fs.pipe_file(f"{bucket}/img/b.png", png_bytes((10, 10, 200)))
    table = write_table(
        tmp_path / "t.parquet", {"prompt": ["a", "b"], "image": [f"{bucket}/img/a.png", f"{bucket}/img/b.png"]}
    )
    raw = job(table, str(tmp_path / "out"), [stage("img2img", tiny["img2img"])], storage_options=options)
    summary = run_job(parse_spec(raw))
    assert (summary.rows_ok, summary.rows_failed) == (2, 0)


def test_unwritable_or_missing_s3_paths_fail_before_any_work(tiny, s3, tmp_path):
    bucket, options, fs = s3
    table = write_table(tmp_path / "t.parquet", {"prompt": ["a"]})
    raw = job(table, "s3://no-such-bucket-here/out", [stage("txt2img", tiny["txt2img"])], storage_options=options)
    with pytest.raises(SpecError, match="output.path: cannot write"):
        run_job(parse_spec(raw))
    raw = job(f"{bucket}/absent/*.parquet", str(tmp_path / "o"), [stage("txt2img", tiny["txt2img"])], storage_options=options)
    with pytest.raises(SpecError, match="input.path: no Parquet files"):
        run_job(parse_spec(raw))
    raw = job(table, str(tmp_path / "o"), [stage("txt2img", f"{bucket}/models/none")], storage_options=options)
    with pytest.raises(SpecError, match="stages.0.model: no diffusers model"):
        run_job(parse_spec(raw))
