"""Driver-side checks of the input table, before any cluster work."""

import pyarrow as pa
import pytest
from conftest import job, stage, write_table

from pipeline import batch as B
from pipeline import preflight
from pipeline.io.prepare import prepare_rows
from pipeline.io.reader import InputError
from pipeline.runner import row_source
from pipeline.spec import parse_spec


def spec_for(input_path, stages):
    return preflight.absolute_paths(parse_spec(job(str(input_path), "out", stages)))


def test_override_columns_no_stage_takes_are_neither_read_nor_checked(tmp_path):
    # A txt2img-only table that also carries other tools' columns: strength 0.0 would be an
    # invalid override, but no stage of this job takes strength.
    columns = {"prompt": ["a red circle", "a blue square"], "strength": [0.0, 2.0], "steps": [3, None], "seed": [5, 6]}
    table = write_table(tmp_path / "in.parquet", columns)
    spec = spec_for(table, [stage("txt2img", "synth:shapes")])
    roles, overrides = preflight.check_input(spec)
    assert set(overrides) == {"steps", "seed"}
    rows = prepare_rows(pa.table(columns), row_source(spec, roles, overrides))
    assert list(rows[B.STATUS]) == ["ok", "ok"]
    assert list(rows[B.SEED]) == [5, 6]

    # The same table for an img2img chain: there strength is taken, and checked per row.
    spec = spec_for(table, [stage("txt2img", "synth:shapes"), stage("img2img", "synth:shapes")])
    assert "strength" in preflight.check_input(spec)[1]


def test_an_empty_first_file_is_skipped_for_the_schema(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"")
    write_table(tmp_path / "b.parquet", {"prompt": ["a red circle"], "steps": [3]})
    roles, overrides = preflight.check_input(spec_for(tmp_path, [stage("txt2img", "synth:shapes")]))
    assert roles["prompt"] == "prompt" and set(overrides) == {"steps"}

    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="input.path: every Parquet file of the input is empty"):
        preflight.check_input(spec_for(tmp_path, [stage("txt2img", "synth:shapes")]))
