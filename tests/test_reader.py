"""The input read: small tables are read by the driver, large ones by Ray Data's
distributed Parquet read, and both give the same rows in the same order."""

import pytest
from conftest import job, stage, write_table

from pipeline import batch as B
from pipeline import preflight
from pipeline.io.reader import InputError, read_input
from pipeline.runner import row_source
from pipeline.spec import parse_spec

pytestmark = pytest.mark.timeout(300)

# Three files of uneven length, so a chunk of the job spans two of them.
FILES = {"a.parquet": range(0, 5), "b.parquet": range(5, 6), "c.parquet": range(6, 13)}


def write_folder(root: str, storage_options: dict | None = None) -> None:
    for name, ids in FILES.items():
        write_table(
            f"{root}/{name}",
            {"prompt": [f"prompt {i}" for i in ids], "id": [f"row-{i:02d}" for i in ids], "unused": list(ids)},
            storage_options,
        )


def chunks(dataset) -> list[list[str]]:
    """The ids of each block after the job's chunking (4 rows per chunk)."""
    cut = dataset.repartition(target_num_rows_per_block=4, strict=True)
    return [batch["id"].tolist() for batch in cut.iter_batches(batch_size=None, batch_format="numpy")]


def spec_for(folder, tmp_path, **fields):
    return parse_spec(job(str(folder), str(tmp_path / "out"), [stage("txt2img", "unused")], **fields))


@pytest.fixture
def ordered(ray_cluster, monkeypatch):
    """Blocks in input order, as run_job sets it."""
    options = ray_cluster.data.DataContext.get_current().execution_options
    monkeypatch.setattr(options, "preserve_order", True)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_driver_and_distributed_reads_cut_the_same_chunks(ray_cluster, ordered, s3, tmp_path, where):
    from ray.data.dataset import MaterializedDataset

    bucket, options, _ = s3
    root = str(tmp_path / "in") if where == "local" else f"{bucket}/in"
    if where == "local":
        (tmp_path / "in").mkdir()
    write_folder(root, options if where == "s3" else None)
    spec = spec_for(root, tmp_path, storage_options=options)

    on_driver = read_input(spec, ["prompt", "id"], task_cpus=0.5)  # a few KB: under the default limit
    distributed = read_input(spec, ["prompt", "id"], task_cpus=0.5, driver_max_bytes=0)
    # from_blocks gives a dataset already in memory; read_parquet a lazy read: each path ran
    assert isinstance(on_driver, MaterializedDataset) and not isinstance(distributed, MaterializedDataset)

    expected = [[f"row-{i:02d}" for i in range(start, min(start + 4, 13))] for start in range(0, 13, 4)]
    assert chunks(on_driver) == expected
    assert chunks(distributed) == expected
    assert on_driver.columns() == distributed.columns() == ["prompt", "id"]  # only the columns asked for


def test_a_corrupt_file_is_named(ray_cluster, tmp_path):
    (tmp_path / "in").mkdir()
    write_folder(str(tmp_path / "in"))
    (tmp_path / "in" / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"input.path: cannot read .*b\.parquet as Parquet"):
        read_input(spec_for(tmp_path / "in", tmp_path), ["prompt", "id"], task_cpus=0.5)


@pytest.mark.parametrize("where", ["driver", "distributed"])
def test_both_reads_give_a_column_a_file_lacks_nulls_and_decode_dictionaries(ray_cluster, ordered, tmp_path, where):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"prompt": ["p0", "p1"]}), tmp_path / "in" / "a.parquet")
    # pandas writes a category column dictionary-encoded
    pq.write_table(pa.table({"prompt": pa.array(["p2"]).dictionary_encode(), "seed": [7]}), tmp_path / "in" / "b.parquet")
    spec = preflight.absolute_paths(spec_for(tmp_path / "in", tmp_path))
    source = row_source(spec, preflight.check_input(spec))  # the types over both files
    assert source.columns() == ["prompt", "seed"]
    limit = None if where == "driver" else 0
    dataset = read_input(spec, source.columns(), task_cpus=0.5, driver_max_bytes=limit, schema=source.read_schema())
    rows = dataset.take_all()
    assert [row["prompt"] for row in rows] == ["p0", "p1", "p2"]
    assert [row["seed"] for row in rows][2] == 7 and all(row["seed"] is None for row in rows[:2])


@pytest.mark.parametrize("where", ["driver", "distributed"])
def test_63_bit_integers_beside_a_float_column_keep_every_digit(ray_cluster, ordered, tmp_path, where):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io.prepare import prepare_rows

    (tmp_path / "in").mkdir()
    # January's seeds are ones synth recorded (63-bit); February's file, from pandas with a
    # null, has them as float64, and Spark declared January's NOT NULL.
    january = pa.table({"prompt": ["a"], "seed": pa.array([2810855828219307461], pa.int64())},
                       schema=pa.schema([("prompt", pa.string()), pa.field("seed", pa.int64(), nullable=False)]))
    pq.write_table(january, tmp_path / "in" / "a.parquet")
    pq.write_table(pa.table({"prompt": ["b", "c"], "seed": [8.0, None]}), tmp_path / "in" / "b.parquet")
    spec = preflight.absolute_paths(spec_for(tmp_path / "in", tmp_path))
    source = row_source(spec, preflight.check_input(spec))
    limit = None if where == "driver" else 0
    dataset = read_input(spec, source.columns(), task_cpus=0.5, driver_max_bytes=limit, schema=source.read_schema())
    rows = prepare_rows(pa.Table.from_pylist(dataset.take_all()), source)
    assert list(rows[B.STATUS]) == ["ok", "ok", "ok"]
    assert [int(seed) for seed in rows[B.SEED][:2]] == [2810855828219307461, 8]


def test_empty_files_are_skipped_and_column_types_widened(ray_cluster, ordered, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"prompt": pa.array(["p0", "p1"], pa.string()), "n": pa.array([0, 1], pa.int32())}),
                   tmp_path / "in" / "a.parquet")
    (tmp_path / "in" / "b.parquet").write_bytes(b"")  # as a failed upload leaves it
    pq.write_table(pa.table({"prompt": pa.array(["p2"], pa.large_string()), "n": pa.array([2], pa.int64())}),
                   tmp_path / "in" / "c.parquet")
    rows = read_input(spec_for(tmp_path / "in", tmp_path), ["prompt", "n"], task_cpus=0.5).take_all()
    assert [row["prompt"] for row in rows] == ["p0", "p1", "p2"]
    assert [row["n"] for row in rows] == [0, 1, 2]
