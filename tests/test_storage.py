"""Atomic writes on a local disk: what a kill between write and rename leaves behind."""

import os

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.io.commit_log import CommitLog


def _part(ids: list[str]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": ids, "status": ["ok"] * len(ids)}), sink)
    return sink.getvalue().to_pybytes()


def test_a_write_killed_before_its_rename_leaves_a_dot_file_that_readers_skip(tmp_path, monkeypatch):
    fs, root = storage.filesystem(str(tmp_path), {})
    metadata = storage.join(root, "metadata")
    storage.write_bytes_atomic(fs, storage.join(metadata, "part-a.parquet"), _part(["a", "b"]))

    # The process dies after writing the temporary file and before renaming it.
    def die(src, dst):
        raise SystemExit("killed")

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(SystemExit):
        storage.write_bytes_atomic(fs, storage.join(metadata, "part-b.parquet"), _part(["c", "d"]))
    monkeypatch.undo()

    leftovers = sorted(os.listdir(metadata))
    assert leftovers[1:] == ["part-a.parquet"] and leftovers[0].startswith(".part-b.parquet.tmp-")
    # The reader the README shows, and the commit log, see only the committed part:
    # a complete leftover is not counted twice, and a truncated one does not break the read.
    assert pds.dataset(metadata, format="parquet").to_table().column("id").to_pylist() == ["a", "b"]
    with open(os.path.join(metadata, leftovers[0]), "r+b") as handle:
        handle.truncate(10)
    assert pds.dataset(metadata, format="parquet").to_table().num_rows == 2
    assert CommitLog(str(tmp_path), {}).committed() == {"a": "ok", "b": "ok"}


def test_a_file_in_metadata_that_synth_did_not_write_is_named_not_a_traceback(tmp_path):
    from pipeline.io.commit_log import CommitLog
    from pipeline.spec import SpecError

    metadata = tmp_path / "metadata"
    metadata.mkdir()
    (metadata / "part-a.parquet").write_bytes(_part(["a"]))
    (metadata / "part-cut.parquet").write_bytes(_part(["b"])[:30])  # cut short
    with pytest.raises(SpecError, match=r"part-cut.parquet is not a metadata file synth wrote"):
        CommitLog(str(tmp_path), {}).committed()
