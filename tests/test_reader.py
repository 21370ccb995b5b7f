"""The input read: small tables are read by the driver, large ones by Ray Data's
distributed Parquet read, and both give the same rows in the same order."""

import pytest
from conftest import job, stage, write_table

from pipeline.io.reader import InputError, read_input
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


@pytest.mark.parametrize("where", ["local", "s3"])
def test_driver_and_distributed_reads_cut_the_same_chunks(ray_cluster, s3, tmp_path, where):
    bucket, options, _ = s3
    root = str(tmp_path / "in") if where == "local" else f"{bucket}/in"
    if where == "local":
        (tmp_path / "in").mkdir()
    write_folder(root, options if where == "s3" else None)
    spec = parse_spec(job(root, str(tmp_path / "out"), [stage("txt2img", "unused")], storage_options=options))
    ray_cluster.data.DataContext.get_current().execution_options.preserve_order = True

    on_driver = read_input(spec, ["prompt", "id"], task_cpus=0.5)  # a few KB: under the default limit
    distributed = read_input(spec, ["prompt", "id"], task_cpus=0.5, driver_max_bytes=0)

    expected = [[f"row-{i:02d}" for i in range(start, min(start + 4, 13))] for start in range(0, 13, 4)]
    assert chunks(on_driver) == expected
    assert chunks(distributed) == expected
    assert on_driver.columns() == distributed.columns() == ["prompt", "id"]  # only the columns asked for


def test_a_corrupt_file_is_named(ray_cluster, tmp_path):
    (tmp_path / "in").mkdir()
    write_folder(str(tmp_path / "in"))
    (tmp_path / "in" / "b.parquet").write_bytes(b"not parquet at all")
    spec = parse_spec(job(str(tmp_path / "in"), str(tmp_path / "out"), [stage("txt2img", "unused")]))
    with pytest.raises(InputError, match=r"input.path: cannot read .*b\.parquet as Parquet"):
        read_input(spec, ["prompt", "id"], task_cpus=0.5)
