"""The sharded output layouts, read back by the libraries training code uses."""

import hashlib
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import job, read_metadata, stage

from pipeline.report import build_report
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(400)

ROWS = 10


def layout_job(tmp_path, tiny, layout: str, out: str = "out", image_format: str = "jpeg"):
    table = tmp_path / "in.parquet"
    if not table.exists():
        steps = [None] * ROWS
        steps[3] = 0  # fails alone: no image, in the metadata only
        pq.write_table(pa.table({"id": [f"row-{i}" for i in range(ROWS)], "prompt": [f"shape {i}" for i in range(ROWS)],
                                 "steps": steps}), table)
    raw = job(str(table), str(tmp_path / out), [stage("txt2img", tiny["txt2img"], batch_size=2)],
              input={"path": str(table), "id_column": "id"})
    raw["output"].update(layout=layout, shard_rows=4, format=image_format)
    return parse_spec(raw)


@pytest.fixture(scope="module")
def webdataset_output(ray_cluster, tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wds")
    summary = run_job(layout_job(tmp, tiny, "webdataset"))
    assert (summary.rows_ok, summary.rows_failed) == (ROWS - 1, 1)
    return tmp


def test_webdataset_shards_are_read_by_webdataset_and_ray_data(ray_cluster, tiny, webdataset_output):
    import ray.data
    import webdataset as wds

    out = webdataset_output / "out"
    tars = sorted(str(path) for path in (out / "shards").glob("*.tar"))
    assert len(tars) == 3 and not (out / "images").exists()  # shards of 4, 4 and 2 rows: 3 objects, not 9
    rows = {row["id"]: row for row in read_metadata(str(out))}

    samples = list(wds.WebDataset(tars, shardshuffle=False))
    assert len(samples) == ROWS - 1
    for sample in samples:
        meta = json.loads(sample["json"])
        row = rows[meta["id"]]
        assert hashlib.sha256(sample["jpg"]).hexdigest() == row["sha256"] == meta["sha256"]
        assert row["image_uri"].endswith(f"#{sample['__key__']}.jpg") and meta["prompt"] == row["prompt"]
    assert rows["row-3"]["status"] == "failed" and rows["row-3"]["image_uri"] is None

    read = ray.data.read_webdataset(tars, decoder=None).take_all()
    assert sorted(hashlib.sha256(item["jpg"]).hexdigest() for item in read) == sorted(
        row["sha256"] for row in rows.values() if row["sha256"])

    # The report finds its sample images inside the tars.
    page = build_report(str(out))
    assert page.count("data:image/") >= 1 and "cannot read the image" not in page


def test_a_killed_sharded_job_resumes_byte_identical(ray_cluster, tiny, webdataset_output):
    out = webdataset_output / "out"
    clean = {path.name: path.read_bytes() for path in (out / "shards").glob("*.tar")}
    resumed = webdataset_output / "resumed"
    # As a kill leaves it: the first run committed one shard, and wrote the tar of another
    # but was killed before its metadata (the commit); the third never started.
    run_job(layout_job(webdataset_output, tiny, "webdataset", "resumed"))
    metadata = sorted((resumed / "metadata").glob("*.parquet"))
    tars = sorted((resumed / "shards").glob("*.tar"))
    metadata[1].unlink()
    metadata[2].unlink()
    tars[2].write_bytes(b"cut short")  # a partial tar is never read: the rerun rewrites it whole
    summary = run_job(layout_job(webdataset_output, tiny, "webdataset", "resumed"))
    assert summary.rows_skipped == 4 and summary.rows_ok + summary.rows_failed == ROWS - 4
    assert {path.name: path.read_bytes() for path in (resumed / "shards").glob("*.tar")} == clean
    names = []
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            names += tar.getnames()
    assert len(names) == len(set(names)) == 2 * (ROWS - 1)  # an image and its json per ok row

    # A resume into the same output with another layout is another job: refused.
    with pytest.raises(SpecError, match="output.layout"):
        run_job(layout_job(webdataset_output, tiny, "parquet", "resumed"))


def test_parquet_shards_are_read_by_hugging_face_datasets(ray_cluster, tiny, tmp_path):
    import datasets

    summary = run_job(layout_job(tmp_path, tiny, "parquet", image_format="png"))
    assert summary.rows_ok == ROWS - 1
    out = tmp_path / "out"
    files = sorted(str(path) for path in (out / "data").glob("*.parquet"))
    assert len(files) == 3
    loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(loaded.features["image"], datasets.Image) and len(loaded) == ROWS - 1
    rows = {row["id"]: row for row in read_metadata(str(out))}
    for item in loaded:
        row = rows[item["id"]]
        assert item["image"].size == (row["width"], row["height"]) and item["prompt"] == row["prompt"]
    raw = loaded.cast_column("image", datasets.Image(decode=False))
    assert sorted(hashlib.sha256(item["image"]["bytes"]).hexdigest() for item in raw) == sorted(
        row["sha256"] for row in rows.values() if row["sha256"])
    page = build_report(str(out))
    assert "cannot read the image" not in page


def test_identical_rows_get_distinct_samples_that_webdataset_reads(tmp_path):
    """Without input.id_column identical rows share an id, so an image key; the tar must
    still name each sample once (webdataset refuses a name twice)."""
    import webdataset as wds

    from pipeline.io.layouts import huggingface_features, parquet_shard, webdataset_tar

    fields = {"id": ["dup", "dup", "other"], "prompt": ["a", "a", "b"], "negative_prompt": ["", "", ""],
              "seed": [1, 1, 2], "stage_chain": ["txt2img"] * 3, "models": [["m"]] * 3, "width": [8] * 3,
              "height": [8] * 3, "format": ["jpeg"] * 3, "sha256": ["x", "y", "z"]}
    metadata = pa.table(fields)
    keys = ["images/ab/abcdef.jpg", "images/ab/abcdef.jpg", "images/cd/cdef01.jpg"]
    tar, members = webdataset_tar(metadata, keys, [b"1", b"2", b"3"])
    assert members == ["abcdef.jpg", "abcdef-1.jpg", "cdef01.jpg"]
    (tmp_path / "shard.tar").write_bytes(tar)
    samples = list(wds.WebDataset(str(tmp_path / "shard.tar"), shardshuffle=False))
    assert [(sample["__key__"], sample["jpg"]) for sample in samples] == [
        ("abcdef", b"1"), ("abcdef-1", b"2"), ("cdef01", b"3")]
    _, names = parquet_shard(metadata, keys, [b"1", b"2", b"3"])
    assert len(set(names)) == 3
    assert huggingface_features()["models"]["_type"] == "Sequence"
