"""Shards: the unit of work and commit, fixed by the spec and the input alone."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import job, read_metadata, stage

from pipeline import storage
from pipeline.io.reader import InputError, read_rows
from pipeline.io.shards import DEFAULT_SHARD_ROWS, MIN_SHARDS, ShardPlan, shard_size
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(400)


def spec_with(tiny, tmp_path, batch_size=2, **output):
    raw = job("in.parquet", str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], batch_size=batch_size)])
    raw["output"].update(output)
    return parse_spec(raw)


def test_shard_size_is_a_function_of_the_spec_and_the_row_count(tiny, tmp_path):
    spec = spec_with(tiny, tmp_path, batch_size=4)
    assert shard_size(spec, 10**8) == DEFAULT_SHARD_ROWS
    assert shard_size(spec, 16 * 100) == 100  # a small table: MIN_SHARDS shards, whole batches
    assert shard_size(spec, 10) == 4  # never below one batch
    assert shard_size(spec_with(tiny, tmp_path, shard_rows=300), 10) == 300  # as given
    big = parse_spec(job("in.parquet", "out", [stage("txt2img", tiny["txt2img"], width=1024, height=1024)]))
    assert shard_size(big, 10**8) * 1024 * 1024 * 3 <= 512 * 2**20  # large images: smaller shards
    assert MIN_SHARDS == 16


def test_a_shard_rows_whose_images_exceed_the_shard_bound_is_refused_naming_the_largest_allowed(tiny):
    from pipeline.io.shards import SHARD_IMAGE_BYTES, max_shard_rows

    def spec(shard_rows, *stages):
        raw = job("in.parquet", "out", list(stages) or [stage("txt2img", tiny["txt2img"], width=1024, height=1024)])
        raw["output"]["shard_rows"] = shard_rows
        return parse_spec(raw)

    largest = SHARD_IMAGE_BYTES // (3 * 1024 * 1024)  # 170 RGB images of 1024x1024 fit in 512 MiB
    assert spec(largest).output.shard_rows == largest
    with pytest.raises(SpecError, match=rf"output.shard_rows: {largest + 1} rows of stages.0's .* the largest allowed "
                                        rf"is {largest}\."):
        spec(largest + 1)
    # The same estimate as the default's: an upscale makes 16x the pixels of what it gets,
    # 64x64 from the stage before (a 256x256 image), or 1024x1024 from a table of images.
    chain = [stage("txt2img", tiny["txt2img"], width=64, height=64), stage("upscale", tiny["upscale"])]
    assert max_shard_rows(parse_spec(job("in.parquet", "out", chain)).stages) == SHARD_IMAGE_BYTES // (3 * 256 * 256)
    assert shard_size(parse_spec(job("in.parquet", "out", chain)), 10**8) == DEFAULT_SHARD_ROWS
    alone = [stage("upscale", tiny["upscale"])]
    assert max_shard_rows(parse_spec(job("in.parquet", "out", alone, input={"path": "in.parquet"})).stages) == \
        largest // 16 == 10
    with pytest.raises(SpecError, match="output.shard_rows: 11 rows of stages.0's .* the largest allowed is 10"):
        spec(11, *alone)


def test_a_shard_spans_files_in_name_order_and_only_the_last_is_short():
    plan = ShardPlan.of({"b.parquet": 4, "a.parquet": 3, "empty.parquet": 0, "c.parquet": 6}, shard_rows=5)
    assert (plan.total_rows, plan.count) == (13, 3)
    assert plan.pieces(0) == [("a.parquet", 0, 3), ("b.parquet", 0, 2)]
    assert plan.pieces(1) == [("b.parquet", 2, 4), ("c.parquet", 0, 3)]
    assert plan.pieces(2) == [("c.parquet", 3, 6)]
    with pytest.raises(IndexError):
        plan.pieces(3)


def test_read_rows_reads_only_a_pieces_rows_across_row_groups_with_the_tables_types(tmp_path):
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(10)], "n": pa.array(range(10), pa.int32())}),
                   tmp_path / "a.parquet", row_group_size=3)
    pq.write_table(pa.table({"prompt": ["q0", "q1"]}), tmp_path / "b.parquet")
    schema = pa.schema([("prompt", pa.string()), ("n", pa.int64())])
    fs = storage.filesystem(str(tmp_path))[0]
    table = read_rows(fs, [(str(tmp_path / "a.parquet"), 4, 8), (str(tmp_path / "b.parquet"), 0, 1)], ["prompt", "n"],
                      schema)
    assert table.schema == schema
    assert table.to_pydict() == {"prompt": ["p4", "p5", "p6", "p7", "q0"], "n": [4, 5, 6, 7, None]}


def test_a_shards_read_keeps_its_row_group_for_the_next_shard_until_the_file_changes(tmp_path):
    import os

    from pipeline.io import reader

    path = tmp_path / "one-group.parquet"
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(100)]}), path)  # one row group
    schema = pa.schema([("prompt", pa.string())])
    fs = storage.filesystem(str(tmp_path))[0]
    plan = ShardPlan.of({str(path): 100}, shard_rows=10, versions={str(path): "v1"})
    reads = []

    class CountingFile(type(fs)):  # the local filesystem, counting the files it opens
        def open(self, *args, **kwargs):
            reads.append(args[0])
            return super().open(*args, **kwargs)

    counting = CountingFile()
    rows = [read_rows(counting, plan.pieces(shard), ["prompt"], schema, plan.file_versions()).column(0).to_pylist()
            for shard in range(plan.count)]
    assert rows == [[f"p{i}" for i in range(10 * n, 10 * n + 10)] for n in range(10)]
    assert len(reads) == 1  # ten shards, one read of their row group

    # Rewritten under the same name: a new version (as preflight finds it) is read anew.
    pq.write_table(pa.table({"prompt": [f"q{i}" for i in range(100)]}), path)
    os.utime(path, ns=(10**18, 10**18))
    plan = ShardPlan.of({str(path): 100}, shard_rows=10, versions={str(path): "v2"})
    assert read_rows(counting, plan.pieces(3), ["prompt"], schema, plan.file_versions()).column(0).to_pylist() == [
        f"q{i}" for i in range(30, 40)]
    assert len(reads) == 2
    # Rewritten again with its mtime put back (as `cp -p` or `rsync -t` do) and the same
    # version in the plan: the file's stat still tells.
    stat = os.stat(path)
    pq.write_table(pa.table({"prompt": [f"r{i}" for i in range(100)]}), path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert read_rows(counting, plan.pieces(3), ["prompt"], schema, plan.file_versions()).column(0).to_pylist() == [
        f"r{i}" for i in range(30, 40)]
    assert len(reads) == 3
    # Without a version nothing is kept.
    read_rows(counting, plan.pieces(3), ["prompt"], schema)
    read_rows(counting, plan.pieces(4), ["prompt"], schema)
    assert len(reads) == 5
    # A file that lost rows since the plan was made is named, not read short.
    pq.write_table(pa.table({"prompt": [f"s{i}" for i in range(35)]}), path)
    with pytest.raises(InputError, match="holds 35 rows, not the 40 or more .* changed during the run"):
        read_rows(counting, plan.pieces(3), ["prompt"], schema, plan.file_versions())
    assert read_rows(counting, [(str(path), 5, 5)], ["prompt"], schema).num_rows == 0  # an empty piece
    assert reader.GROUP_CACHE_BYTES >= 2**20


def test_shards_are_committed_whole_and_a_resume_must_keep_the_shard_size(ray_cluster, tiny, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": [f"a{i}" for i in range(7)], "prompt": [f"a prompt {i}" for i in range(7)]}),
                   folder / "a.parquet", row_group_size=2)
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(6)], "prompt": [f"b prompt {i}" for i in range(6)]}),
                   folder / "b.parquet")

    def raw(out, **output):
        spec = job(str(folder), str(out), [stage("txt2img", tiny["txt2img"], batch_size=2)],
                   input={"path": str(folder), "id_column": "id"})
        spec["output"].update(output)
        return spec

    out = tmp_path / "out"
    summary = run_job(parse_spec(raw(out, shard_rows=5)))
    assert summary.rows_ok == 13
    assert json.loads((out / "shards.json").read_text())["shard_rows"] == 5
    # Shards of 5 consecutive rows in file order, whatever order they finished in.
    shards = sorted(sorted(pq.read_table(f).column("id").to_pylist()) for f in (out / "metadata").glob("*.parquet"))
    assert shards == [["a0", "a1", "a2", "a3", "a4"], ["a5", "a6", "b0", "b1", "b2"], ["b3", "b4", "b5"]]

    # Byte for byte the same as a second output of the same job.
    run_job(parse_spec(raw(tmp_path / "again", shard_rows=5)))
    assert [r["sha256"] for r in read_metadata(str(out))] == [r["sha256"] for r in read_metadata(str(tmp_path / "again"))]

    # Another shard size would cut other shards: refused, naming the field; the same one resumes.
    with pytest.raises(SpecError, match="output.shard_rows"):
        run_job(parse_spec(raw(out, shard_rows=4)))
    assert run_job(parse_spec(raw(out, shard_rows=5))).rows_skipped == 13


def test_a_resume_finds_committed_shards_from_a_listing_and_retries_failed_shards_whole(ray_cluster, tiny, tmp_path,
                                                                                        monkeypatch, caplog):
    import logging

    from pipeline import preflight, runner

    ids = [f"r{i:02d}" for i in range(12)]
    steps = [None] * 12
    steps[7] = 0  # fails: steps must be at least 1
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ids, "prompt": [f"prompt {i}" for i in range(12)], "steps": steps}), table)
    raw = job(str(table), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], batch_size=2)],
              input={"path": str(table), "id_column": "id"})
    raw["output"]["shard_rows"] = 3
    # The first run in windows of 3 shards (two datasets, one after another); the resumes
    # below run in one, and give the same bytes.
    monkeypatch.setattr(runner, "WINDOW_SHARDS", 3)
    with caplog.at_level(logging.INFO, logger="synth.runner"):
        first = run_job(parse_spec(raw))
    assert "window 2 of 2: shards 3 to 3" in caplog.text
    monkeypatch.undo()
    # The first run checked the ids; a resume of the same input trusts that record.
    checks = []
    monkeypatch.setattr(preflight, "_check_unique_ids", lambda *args: checks.append(args))
    assert (first.rows_ok, first.rows_failed) == (11, 1)
    metadata = tmp_path / "out" / "metadata"
    names = sorted(path.name for path in metadata.glob("*.parquet"))
    assert [name.split("-")[1] for name in names] == ["000000000", "000000001", "000000002", "000000003"]
    assert [name.rsplit("-", 2)[1:] for name in names] == [["r3", "f0.parquet"]] * 2 + [["r3", "f1.parquet"]] + [
        ["r3", "f0.parquet"]]
    clean = {row["id"]: row["sha256"] for row in read_metadata(str(tmp_path / "out"))}

    # As after a kill: shard 1 is not committed. The resume finds the others from the listing
    # alone: it does not read a committed shard's file (here not even Parquet any more).
    (metadata / names[1]).unlink()
    (metadata / names[3]).write_bytes(b"not read by a resume")
    resumed = run_job(parse_spec(raw))
    assert (resumed.rows_ok, resumed.rows_skipped, resumed.skipped_failed) == (3, 9, 1)
    (metadata / names[3]).unlink()
    resumed = run_job(parse_spec(raw))
    assert (resumed.rows_ok, resumed.rows_skipped) == (3, 9)
    assert {row["id"]: row["sha256"] for row in read_metadata(str(tmp_path / "out"))} == clean

    assert checks == []

    # --retry-failed reruns the failed row's shard whole, and no other.
    retried = run_job(parse_spec(raw), retry_failed=True)
    assert (retried.rows_ok, retried.rows_failed, retried.rows_skipped) == (2, 1, 9)
    assert sorted(path.name for path in metadata.glob("*.parquet")) == names
    assert {row["id"]: row["sha256"] for row in read_metadata(str(tmp_path / "out"))} == clean


def test_duplicate_ids_are_found_across_hash_partitions(monkeypatch):
    from collections import Counter

    from pipeline.io import unique_ids

    files = [pa.array([f"id-{i}" for i in range(0, 5000)]), pa.array([f"id-{i}" for i in range(4990, 9000)] + ["", ""]),
             pa.array(["ü", "ü", "x", "121", "202"], pa.large_string())]
    counts = Counter(v for array in files for v in array.to_pylist())
    expected = sorted(v for v, n in counts.items() if n > 1)
    hashes = unique_ids.id_hashes(pa.array([f"id-{i}" for i in range(9000)] + ["121", "202", ""]))
    assert len(set(hashes.tolist())) == 9003  # no two ids of this table share a hash
    monkeypatch.setattr(unique_ids, "PARTITION_IDS", 1000)  # 10 partitions
    found, shown = unique_ids.duplicated_ids(lambda: iter(files), sum(len(a) for a in files))
    assert found == len(expected) == 12 and set(shown) <= set(expected) and len(shown) == 3
    assert unique_ids.duplicated_ids(lambda: iter(files[:1]), 5000) == (0, [])


def test_a_rewritten_input_turns_the_fast_resume_off_for_good(tiny, tmp_path):
    """A file rewritten with its rows in another order may keep its size, and its mtime; its
    version (ETag, or a local file's mtime, ctime and inode) tells. Once the input changed, shard numbers committed since name that input's
    shards, so the first input coming back does not turn the listing-based resume on again."""
    import os

    from pipeline import preflight
    from pipeline.io.commit_log import CommitLog

    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(8)], "prompt": ["p"] * 8}), table, compression="none")
    spec = parse_spec(job(str(table), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])],
                          input={"path": str(table), "id_column": "id"}))
    log = CommitLog.of(spec)
    first = preflight.check_input(spec)
    assert not log.ids_checked(spec, first.rows, first.sizes, first.versions)  # no record yet
    assert log.shards(spec, first.rows, first.sizes, first.versions)[1] is True
    assert log.ids_checked(spec, first.rows, first.sizes, first.versions)  # a resume skips the id check
    other = parse_spec(job(str(table), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"])],
                           input={"path": str(table), "id_column": "prompt"}))
    assert not log.ids_checked(other, first.rows, first.sizes, first.versions)  # another id column
    stat = os.stat(table)
    pq.write_table(pa.table({"id": [f"r{i}" for i in reversed(range(8))], "prompt": ["p"] * 8}), table,
                   compression="none")
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # its mtime put back, as `touch -r` or `cp -p` do
    rewritten = preflight.check_input(spec)
    assert rewritten.sizes == first.sizes and rewritten.versions != first.versions
    assert log.shards(spec, rewritten.rows, rewritten.sizes, rewritten.versions)[1] is False
    assert log.shards(spec, first.rows, first.sizes, first.versions)[1] is False
    assert not log.ids_checked(spec, rewritten.rows, rewritten.sizes, rewritten.versions)
    assert not log.ids_checked(spec, first.rows, first.sizes, first.versions)


def test_a_lost_shards_json_keeps_the_committed_shard_size_and_resumes_by_ids(tiny, tmp_path):
    from pipeline import preflight
    from pipeline.io.commit_log import CommitLog

    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(8)]}), table)
    spec = parse_spec(job(str(table), str(tmp_path / "out"), [stage("txt2img", tiny["txt2img"], batch_size=2)]))
    metadata = tmp_path / "out" / "metadata"
    metadata.mkdir(parents=True)
    for name in (f"shard-000000000-{'a' * 20}-r3-f0.parquet", f"shard-000000002-{'b' * 20}-r2-f1.parquet"):
        (metadata / name).write_bytes(b"committed")  # as a run of 3-row shards left them
    columns = preflight.check_input(spec)
    # Not the largest batch (2), as for an output written before shards: its committed shards' size.
    assert CommitLog.of(spec).shards(spec, columns.rows, columns.sizes, columns.versions) == (3, False)
    assert json.loads((tmp_path / "out" / "shards.json").read_text())["shard_rows"] == 3
