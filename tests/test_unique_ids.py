"""The input's unique-id check: read in batches, hashes kept in numpy, a bounded text check."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import job, stage

from pipeline import preflight
from pipeline.io import unique_ids
from pipeline.keys import id_text
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(120)


def check(folder):
    """preflight's check of the input folder's `key` column."""
    spec = preflight.absolute_paths(parse_spec(job(str(folder), "out", [stage("txt2img", "synth:shapes")],
                                                   input={"path": str(folder), "id_column": "key"})))
    preflight.check_input(spec)


def write(path, keys, key_type=None, row_group_size=None):
    pq.write_table(pa.table({"prompt": ["p"] * len(keys), "key": pa.array(keys, key_type)}), path,
                   row_group_size=row_group_size)


@pytest.fixture
def batches_seen(monkeypatch):
    """The length of each id array preflight hands the counter (both passes)."""
    seen = []
    counted = unique_ids.duplicated_ids

    def spy(id_arrays, total, examples=3):
        def arrays():
            for ids in id_arrays():
                seen.append(len(ids))
                yield ids
        return counted(arrays, total, examples)

    monkeypatch.setattr(unique_ids, "duplicated_ids", spy)
    return seen


def test_ids_are_read_in_batches_across_files_and_duplicates_found_within_and_across(tmp_path, monkeypatch,
                                                                                      batches_seen):
    monkeypatch.setattr(unique_ids, "BATCH_IDS", 4)
    write(tmp_path / "a.parquet", [f"a{i}" for i in range(10)] + ["twice-in-a", None, "twice-in-a"], row_group_size=5)
    (tmp_path / "b.parquet").write_bytes(b"")  # as a failed upload leaves it: not read
    # A pandas category column is read dictionary-encoded; its values are the ids.
    categories = pa.array(["a3", "c1", None, "a7", "c2"]).dictionary_encode()
    pq.write_table(pa.table({"prompt": ["p"] * 5, "key": categories}), tmp_path / "c.parquet")
    with pytest.raises(SpecError, match=r"^input.id_column: 3 ids appear more than once in column 'key', "
                                        r"e.g. 'a3', 'a7', 'twice-in-a'$"):
        check(tmp_path)
    assert max(batches_seen) <= 4
    # Both passes read every row of both files (nulls dropped): 12 + 4 ids, in batches of 4.
    assert sum(batches_seen) == 2 * (12 + 4) and len(batches_seen) >= 2 * (4 + 2)

    batches_seen.clear()
    write(tmp_path / "a.parquet", [f"a{i}" for i in range(10)], row_group_size=5)
    write(tmp_path / "c.parquet", [f"c{i}" for i in range(9)])
    check(tmp_path)  # no duplicate: one pass
    assert sum(batches_seen) == 19 and max(batches_seen) <= 4


def test_a_file_that_is_not_parquet_is_named(tmp_path):
    write(tmp_path / "a.parquet", ["x"])
    spec = preflight.absolute_paths(parse_spec(job(str(tmp_path), "out", [stage("txt2img", "synth:shapes")],
                                                   input={"path": str(tmp_path), "id_column": "key"})))
    (tmp_path / "a.parquet").write_bytes(b"PAR1 but not Parquet")
    with pytest.raises(Exception, match=r"input.path: cannot read .*a\.parquet as Parquet"):
        preflight._check_unique_ids(spec, [str(tmp_path / "a.parquet")], 1)


def test_numbers_are_ids_as_rows_carry_them(tmp_path, monkeypatch):
    monkeypatch.setattr(unique_ids, "BATCH_IDS", 3)
    write(tmp_path / "a.parquet", [1, 2, 3, 7, 5, 6, 8], pa.int64())
    write(tmp_path / "b.parquet", [9.5, None, 7.0, float("nan"), 10.0, 8.0, 11.0], pa.float64())
    with pytest.raises(SpecError, match=r"2 ids appear more than once in column 'key', e.g. '7', '8'$"):
        check(tmp_path)

    # Integers are cast by Arrow, other types go through keys.id_text: the same texts.
    ints = pa.array([0, -5, 2**63 - 1, -(2**63), 7], pa.int64())
    assert preflight._id_texts(ints).to_pylist() == [id_text(v) for v in ints.to_pylist()]
    assert preflight._id_texts(pa.array([2**64 - 1, None], pa.uint64())).to_pylist() == [str(2**64 - 1)]
    assert preflight._id_texts(pa.array([7.0, 7.5, float("nan"), None, 1e20])).to_pylist() == [
        "7", "7.5", str(10**20)]
    assert preflight._id_texts(pa.array([b"ok", b"\xff\xfe", None], pa.binary())).to_pylist() == ["ok"]
    assert preflight._id_texts(pa.array([True])).to_pylist() == [id_text(True)]


def test_the_count_beyond_the_verified_hashes_comes_from_the_hashes(monkeypatch):
    monkeypatch.setattr(unique_ids, "VERIFIED_HASHES", 5)
    ids = [pa.array([f"id-{i}" for i in range(100)]), pa.array([f"id-{i}" for i in range(60, 120)]),
           pa.array(["once", "id-3", "id-3"], pa.large_string())]
    duplicated = {f"id-{i}" for i in range(60, 100)} | {"id-3"}
    found, shown = unique_ids.duplicated_ids(lambda: iter(ids), 163)
    assert found == len(duplicated) == 41
    assert len(shown) == 3 and set(shown) <= duplicated
    assert unique_ids.duplicated_ids(lambda: iter(ids[:1]), 100) == (0, [])


def test_ids_whose_hashes_collide_are_not_duplicates(tmp_path, monkeypatch):
    """A weak hash (an id's length) makes distinct ids collide: the text check clears them."""
    monkeypatch.setattr(unique_ids, "id_hashes",
                        lambda ids: np.array([len(v) for v in ids.to_pylist()], np.uint64))
    monkeypatch.setattr(unique_ids, "BATCH_IDS", 2)
    write(tmp_path / "a.parquet", ["aa", "bb", "c", "dd"])
    write(tmp_path / "b.parquet", ["ee", "fff", "ggg", "h"])
    check(tmp_path)  # every repeated hash verified, none an id twice: no error

    write(tmp_path / "b.parquet", ["ee", "fff", "ggg", "bb"])
    with pytest.raises(SpecError, match=r"1 ids appear more than once in column 'key', e.g. 'bb'$"):
        check(tmp_path)

    # Two repeated hashes (lengths 2 and 3), one verified: that one a collision, the
    # other counted from its hash.
    monkeypatch.setattr(unique_ids, "VERIFIED_HASHES", 1)
    assert unique_ids.duplicated_ids(lambda: iter([pa.array(["aa", "bb", "ccc", "ddd"])]), 4) == (1, [])


def test_hashes_do_not_depend_on_how_ids_are_sliced(monkeypatch):
    ids = pa.chunked_array([pa.array(["", "a", "ü" * 40, "row-1"]), pa.array(["x" * 300, "", "row-1", "b"])])
    whole = unique_ids.id_hashes(ids)
    assert whole[3] == whole[6] and whole[0] == whole[5] and len(set(whole.tolist())) == 6
    monkeypatch.setattr(unique_ids, "HASH_BYTES", 7)
    monkeypatch.setattr(unique_ids, "HASH_IDS", 2)
    assert unique_ids.id_hashes(ids).tolist() == whole.tolist()
    assert unique_ids.id_hashes(ids.combine_chunks().slice(2, 5)).tolist() == whole[2:7].tolist()


# In a fresh process: tracemalloc sees numpy's and Python's allocations, a proxy memory
# pool Arrow's (the Parquet reader's buffers); the peak of each is measured while the check
# reads 2*10**6 ids in batches of 65,536, then in one batch of the whole file.
MEASURE = """
import json, os, sys, tracemalloc
import pyarrow as pa
from pipeline import preflight
from pipeline.io import unique_ids
from pipeline.spec import parse_spec

path = sys.argv[1]
spec = parse_spec({"name": "t", "seed": 1, "input": {"path": path, "id_column": "key"},
                   "stages": [{"kind": "txt2img", "model": "synth:shapes"}], "output": {"path": "out"}})
peaks, pools, system = {}, [], pa.default_memory_pool()
for batch in (65_536, 2_000_000):
    unique_ids.BATCH_IDS = batch
    pool = pa.proxy_memory_pool(system)
    pools.append(pool)
    pa.set_memory_pool(pool)
    tracemalloc.start()
    preflight._check_unique_ids(spec, [path], 2_000_000)
    peaks[batch] = (tracemalloc.get_traced_memory()[1] + pool.max_memory()) / 2**20
    tracemalloc.stop()
print(json.dumps(peaks), flush=True)
os._exit(0)  # no teardown: the proxy pools must outlive every buffer they gave
"""


def test_the_check_holds_a_bounded_slice_of_the_ids_at_a_time(tmp_path):
    """Measured on this machine: 32 MiB with batches of 65,536 ids (half of it the sort of
    the 2*10**6 hashes); 86 MiB reading the whole file as one batch; the previous check,
    which read and hashed each file's column whole, peaked at 915 MiB (827 of them numpy
    temporaries)."""
    import pyarrow.compute as pc

    digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(2_000_000)), pa.string()), 9, "0")
    pq.write_table(pa.table({"key": pc.binary_join_element_wise("row-", digits, "")}), tmp_path / "ids.parquet")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "ids.parquet")], env=env,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    peaks = json.loads(done.stdout.splitlines()[-1])
    assert peaks["65536"] < 64 < peaks["2000000"], peaks
