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


def test_a_shard_file_a_killed_run_never_committed_is_removed_once_the_input_changed(ray_cluster, tiny, tmp_path):
    """A killed writer leaves a shard file that no metadata names. After the input changes,
    the rerun numbers its shards by another plan and would never write that name again: the
    run removes it under its lease, keeps every committed file, and leaves alone an
    uncommitted file so young that a live writer could still commit it."""
    import os
    import time

    import webdataset as wds

    out = tmp_path / "out"
    assert run_job(layout_job(tmp_path, tiny, "webdataset")).rows_ok == ROWS - 1
    metadata = sorted((out / "metadata").glob("*.parquet"))  # by shard number: rows 0-3, 4-7, 8-9
    tars = sorted((out / "shards").glob("*.tar"))
    committed = {path: path.read_bytes() for path in tars[:2]}
    metadata[2].unlink()  # as a kill leaves it: shard 2's tar written, its metadata never
    old = time.time() - 2 * 3600  # past commit_log.orphan_quiet_s: no retried write is that late
    os.utime(tars[2], (old, old))
    young = out / "shards" / f"shard-000000007-{'0' * 20}.tar"  # a writer may be about to commit it
    young.write_bytes(b"being written")

    # The input changes: two rows more. Rows 8 and 9 now share shard 2 with rows 10 and 11, a
    # shard of another name (its rows' hash).
    table = pq.read_table(tmp_path / "in.parquet")
    more = pa.table({"id": ["row-10", "row-11"], "prompt": ["shape 10", "shape 11"], "steps": [None, None]},
                    schema=table.schema)
    pq.write_table(pa.concat_tables([table, more]), tmp_path / "in.parquet")
    summary = run_job(layout_job(tmp_path, tiny, "webdataset"))
    assert (summary.rows_skipped, summary.rows_ok) == (ROWS - 2, 4)

    assert not tars[2].exists() and young.exists()
    assert {path: path.read_bytes() for path in tars[:2]} == committed  # nothing committed is touched
    rows = read_metadata(str(out))
    named = {row["image_uri"].rsplit("#", 1)[0] for row in rows if row["image_uri"]}
    assert named == {str(path) for path in (out / "shards").glob("*.tar")} - {str(young)}
    samples = list(wds.WebDataset(sorted(named), shardshuffle=False))
    assert sorted(json.loads(sample["json"])["id"] for sample in samples) == sorted(
        row["id"] for row in rows if row["status"] == "ok") and len(samples) == ROWS + 1


def test_the_orphan_sweep_lists_s3_and_keeps_what_metadata_names_or_a_writer_may_commit(s3, monkeypatch):
    from pipeline.io import commit_log
    from pipeline.io.commit_log import CommitLog

    bucket, options, fs = s3
    committed, orphan = (f"{bucket}/out/data/shard-00000000{n}-{str(n) * 20}.parquet" for n in (1, 2))
    for path in (committed, orphan, f"{bucket}/out/data/notes.parquet"):  # notes: not a shard's name, kept
        fs.pipe_file(path, b"shard")
    fs.pipe_file(f"{bucket}/out/metadata/shard-000000001-{'1' * 20}-r4-f0.parquet", b"commits shard 1")
    log = CommitLog(f"{bucket}/out", options)
    assert commit_log.orphan_quiet_s(300) == 3600 and commit_log.orphan_quiet_s(3600) == 4 * 3600
    assert log.sweep_orphan_shards("parquet", lease_timeout_s=300) == 0  # written just now: a writer may commit it
    monkeypatch.setattr(commit_log, "orphan_quiet_s", lambda timeout: -60)  # any age counts as quiet
    assert log.sweep_orphan_shards("webdataset", lease_timeout_s=300) == 0  # another layout's folder: nothing there
    assert log.sweep_orphan_shards("parquet", lease_timeout_s=300) == 1
    fs.invalidate_cache()
    assert sorted(fs.find(f"{bucket}/out/data")) == sorted([committed[5:], f"{bucket[5:]}/out/data/notes.parquet"])


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


class CountingFileSystem:
    """A real local fsspec filesystem that counts, per file, the opens and the bytes read."""

    def __new__(cls):
        from collections import Counter

        from fsspec.implementations.local import LocalFileSystem

        class Counting(LocalFileSystem):
            def _open(self, path, mode="rb", **kwargs):
                handle = super()._open(path, mode, **kwargs)
                self.opens[path] += 1
                for name in ("read", "readinto"):
                    method = getattr(handle, name)

                    def counted(*args, _method=method, _name=name, **kw):
                        result = _method(*args, **kw)
                        self.bytes_read[path] += result if _name == "readinto" else len(result)
                        return result

                    setattr(handle, name, counted)
                return handle

        fs = Counting(skip_instance_cache=True)
        fs.opens, fs.bytes_read = Counter(), Counter()
        return fs


def test_the_report_reads_each_shard_file_once_and_only_what_its_samples_need(tmp_path, s3):
    """Thumbnails of samples in webdataset and Parquet shards: each shard file is opened
    once whatever its samples, a tar is read only up to its last wanted member and a Parquet
    file only in the row groups that hold one; the thumbnails are those of the images."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.io.layouts import SAMPLE_FIELDS, parquet_shard, webdataset_tar
    from pipeline.report.thumbs import encode_thumbnail, thumbnails

    rows, generator = 250, np.random.default_rng(0)
    images = []
    for _ in range(rows):  # noise: every image a few KB, as incompressible as photos
        buffer = io.BytesIO()
        Image.fromarray(generator.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
        images.append(buffer.getvalue())
    metadata = pa.table({name: [f"{name}-{i}" for i in range(rows)] for name in SAMPLE_FIELDS}).set_column(
        SAMPLE_FIELDS.index("format"), "format", pa.array(["jpeg"] * rows))
    keys = [f"images/{i:02x}/{i:020x}.jpg" for i in range(rows)]
    wanted = {}
    for layout, build in (("shards", webdataset_tar), ("data", parquet_shard)):
        (tmp_path / layout).mkdir()
        for shard in ("a", "b"):
            data, members = build(metadata, keys, images)
            name = f"{layout}/{shard}{'.tar' if layout == 'shards' else '.parquet'}"
            (tmp_path / name).write_bytes(data)
            picked = (0, 5, 20, 41) if shard == "a" else (7, 60)  # all within the first row group of 100
            wanted.update({f"{name}#{members[i]}": images[i] for i in picked})
    missing = ["shards/b.tar#not-there.jpg", "data/gone.parquet#x.jpg"]

    fs = CountingFileSystem()
    thumbs = thumbnails(fs, str(tmp_path), list(wanted) + missing)
    for key, data in wanted.items():
        assert thumbs[key] == encode_thumbnail(data)
    assert thumbs[missing[0]] == "cannot read the image: missing"
    assert thumbs[missing[1]].startswith("cannot read the image:") and "gone.parquet" in thumbs[missing[1]]

    sizes = {str(tmp_path / name): (tmp_path / name).stat().st_size
             for name in ("shards/a.tar", "shards/b.tar", "data/a.parquet", "data/b.parquet")}
    assert {path: fs.opens[path] for path in sizes} == dict.fromkeys(sizes, 1)  # each file once, for all its samples
    assert fs.bytes_read[str(tmp_path / "shards/a.tar")] < 0.3 * sizes[str(tmp_path / "shards/a.tar")]
    # b.tar: a member it does not hold is looked for to the end of the file
    assert fs.bytes_read[str(tmp_path / "shards/b.tar")] > 0.9 * sizes[str(tmp_path / "shards/b.tar")]
    for name in ("data/a.parquet", "data/b.parquet"):  # of three row groups, the image bytes of one
        assert 0 < fs.bytes_read[str(tmp_path / name)] < 0.5 * sizes[str(tmp_path / name)]

    # The same through s3fs (ranged reads on a real S3 server).
    from conftest import upload_folder

    from pipeline import storage

    bucket, options, s3fs = s3
    upload_folder(s3fs, tmp_path, f"{bucket}/out")
    remote, root = storage.filesystem(f"{bucket}/out", options)
    from_s3 = thumbnails(remote, root, list(wanted) + missing)
    assert {key: from_s3[key] for key in [*wanted, missing[0]]} == {key: thumbs[key] for key in [*wanted, missing[0]]}
    assert from_s3[missing[1]].startswith("cannot read the image:") and "gone.parquet" in from_s3[missing[1]]
