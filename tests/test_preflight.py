"""Driver-side checks of the input table, before any cluster work."""

import pyarrow as pa
import pytest
from conftest import job, stage, write_table

from pipeline import batch as B
from pipeline import preflight
from pipeline.io.prepare import prepare_rows
from pipeline.io.reader import InputError
from pipeline.runner import row_source
from pipeline.spec import SpecError, parse_spec


def spec_for(input_path, stages):
    return preflight.absolute_paths(parse_spec(job(str(input_path), "out", stages)))


def test_override_columns_no_stage_takes_are_neither_read_nor_checked(tmp_path):
    # A txt2img-only table that also carries other tools' columns: strength 0.0 would be an
    # invalid override, but no stage of this job takes strength.
    columns = {"prompt": ["a red circle", "a blue square"], "strength": [0.0, 2.0], "steps": [3, None], "seed": [5, 6]}
    table = write_table(tmp_path / "in.parquet", columns)
    spec = spec_for(table, [stage("txt2img", "synth:shapes")])
    found = preflight.check_input(spec)
    assert set(found.overrides) == {"steps", "seed"}
    rows = prepare_rows(pa.table(columns), row_source(spec, found))
    assert list(rows[B.STATUS]) == ["ok", "ok"]
    assert list(rows[B.SEED]) == [5, 6]

    # The same table for an img2img chain: there strength is taken, and checked per row.
    spec = spec_for(table, [stage("txt2img", "synth:shapes"), stage("img2img", "synth:shapes")])
    assert "strength" in preflight.check_input(spec).overrides


def test_an_empty_first_file_is_skipped_for_the_schema(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"")
    write_table(tmp_path / "b.parquet", {"prompt": ["a red circle"], "steps": [3]})
    found = preflight.check_input(spec_for(tmp_path, [stage("txt2img", "synth:shapes")]))
    assert found.roles["prompt"] == "prompt" and set(found.overrides) == {"steps"}

    (tmp_path / "b.parquet").write_bytes(b"")
    with pytest.raises(InputError, match="input.path: every Parquet file of the input is empty"):
        preflight.check_input(spec_for(tmp_path, [stage("txt2img", "synth:shapes")]))


def test_columns_that_only_a_later_file_has_are_read(tmp_path):
    # Last month's file has prompts only; this month's adds seeds and steps.
    write_table(tmp_path / "2024-01.parquet", {"prompt": ["a red circle"]})
    write_table(tmp_path / "2024-02.parquet", {"prompt": ["a blue square"], "seed": [42], "steps": [3],
                                               "negative_prompt": ["blurry"]})
    found = preflight.check_input(spec_for(tmp_path, [stage("txt2img", "synth:shapes")]))
    assert set(found.overrides) == {"seed", "steps"} and found.roles["negative_prompt"] == "negative_prompt"


def test_a_file_without_a_column_the_job_cannot_do_without_is_named(tmp_path):
    write_table(tmp_path / "a.parquet", {"prompt": ["a red circle"], "key": ["k1"]})
    write_table(tmp_path / "b.parquet", {"caption": ["a blue square"], "key": ["k2"]})
    with pytest.raises(SpecError, match=r"input.columns.prompt: column 'prompt' is not in .*b\.parquet, one of"):
        preflight.check_input(spec_for(tmp_path, [stage("txt2img", "synth:shapes")]))

    write_table(tmp_path / "b.parquet", {"prompt": ["a blue square"]})
    spec = preflight.absolute_paths(parse_spec(job(str(tmp_path), "out", [stage("txt2img", "synth:shapes")],
                                                   input={"path": str(tmp_path), "id_column": "key"})))
    with pytest.raises(SpecError, match=r"input.id_column: column 'key' is not in .*b\.parquet"):
        preflight.check_input(spec)


def test_ids_are_checked_across_files_as_rows_carry_them_and_empty_files_are_skipped(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a"], "key": pa.array([7], pa.int64())}), tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"")  # as a failed upload leaves it
    pq.write_table(pa.table({"prompt": ["b"], "key": pa.array([7.0])}), tmp_path / "c.parquet")
    spec = preflight.absolute_paths(parse_spec(job(str(tmp_path), "out", [stage("txt2img", "synth:shapes")],
                                                   input={"path": str(tmp_path), "id_column": "key"})))
    with pytest.raises(SpecError, match=r"input.id_column: 1 ids appear more than once in column 'key', e.g. '7'"):
        preflight.check_input(spec)


def test_hidden_files_and_an_output_inside_the_input_folder_are_not_input(tmp_path):
    from pipeline.io.reader import input_files

    for name in ["a.parquet", "sub/b.parquet", ".c.parquet", "_temporary/0/d.parquet", "out/metadata/part-1.parquet",
                 "out/data/shard-000000000-0.parquet"]:  # the parquet layout's shards: not input either
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write_table(tmp_path / name, {"prompt": ["x"]})
    listed = input_files(str(tmp_path), {}, output=str(tmp_path / "out"))[1]
    assert [file[len(str(tmp_path)) + 1:] for file in listed] == ["a.parquet", "sub/b.parquet"]
    assert len(input_files(str(tmp_path / "*.parquet"), {})[1]) == 1
    # a file named outright, or a glob that names hidden files, is taken as asked
    assert input_files(str(tmp_path / "a.parquet"), {}, output=str(tmp_path))[1] == [str(tmp_path / "a.parquet")]
    assert input_files(str(tmp_path / ".c*.parquet"), {})[1] == [str(tmp_path / ".c.parquet")]
    # The output named through a symlink to the input's folder is still the output.
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    (tmp_path / "sub" / "out" / "data").mkdir(parents=True)
    write_table(tmp_path / "sub" / "out" / "data" / "shard-000000000-0.parquet", {"prompt": ["x"]})
    listed = input_files(str(tmp_path / "sub"), {}, output=str(tmp_path / "link" / "out"))[1]
    assert [file[len(str(tmp_path)) + 1:] for file in listed] == ["sub/b.parquet"]


def test_override_columns_can_be_renamed_or_turned_off(tmp_path):
    # A LAION-style table: width and height describe the source images, not the output.
    columns = {"prompt": ["a red circle"], "width": [1023], "height": [767], "row_seed": [42]}
    table = write_table(tmp_path / "in.parquet", columns)
    raw = job(str(table), "out", [stage("txt2img", "synth:shapes")],
              input={"path": str(table), "overrides": {"width": None, "height": None, "seed": "row_seed"}})
    spec = preflight.absolute_paths(parse_spec(raw))
    found = preflight.check_input(spec)
    assert found.overrides == {"seed": "row_seed"}
    rows = prepare_rows(pa.table(columns), row_source(spec, found))
    assert list(rows[B.STATUS]) == ["ok"] and list(rows[B.SEED]) == [42]
    assert all(rows[B.override_column(name)][0] != rows[B.override_column(name)][0] for name in ("width", "height"))


def test_a_resume_compares_override_columns_and_reads_older_job_files_with_defaults(tmp_path):
    import json

    from pipeline.io.commit_log import CommitLog

    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"]})
    raw = job(str(table), str(tmp_path / "out"), [stage("txt2img", "synth:shapes")])
    spec = preflight.absolute_paths(parse_spec(raw))
    (tmp_path / "out").mkdir()
    log = CommitLog.of(spec)
    log.record_job(spec)
    written = json.loads((tmp_path / "out" / "job.json").read_text())
    del written["input"]["overrides"]  # as outputs written before the field existed
    (tmp_path / "out" / "job.json").write_text(json.dumps(written))
    log.check_same_job(spec)  # the same job: its defaults

    turned_off = preflight.absolute_paths(parse_spec({**raw, "input": {"path": str(table), "overrides": {"width": None}}}))
    with pytest.raises(SpecError, match=r"input.overrides was .*'width': 'width'.*, is now .*'width': None"):
        log.check_same_job(turned_off)

    # Committed rows whose ids an older synth hashed (no row_ids.json): a resume would
    # match none of them, so it is refused, unless the rows have ids of their own.
    (tmp_path / "out" / "row_ids.json").unlink()
    (tmp_path / "out" / "metadata").mkdir()
    write_table(tmp_path / "out" / "metadata" / "part-1.parquet", {"id": ["0daa9a50"], "status": ["ok"]})
    with pytest.raises(SpecError, match=r"holds rows whose ids an older synth computed \(row id scheme 1, now 2\)"):
        log.check_same_job(spec)
    log.record_job(spec)  # as this version's run writes it
    log.check_same_job(spec)


def test_a_misspelt_override_column_is_refused(tmp_path):
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"], "row_seed": [42]})
    raw = job(str(table), "out", [stage("txt2img", "synth:shapes")],
              input={"path": str(table), "overrides": {"seed": "row_sed"}})
    with pytest.raises(SpecError, match=r"input.overrides.seed: column 'row_sed' is not in the input table"):
        preflight.check_input(preflight.absolute_paths(parse_spec(raw)))


def test_an_unknown_scheduler_is_refused_before_ray_naming_the_field(tmp_path):
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"]})
    spec = parse_spec(job(str(table), "out", [stage("txt2img", "synth:shapes", scheduler="NotAScheduler")]))
    with pytest.raises(SpecError, match=r"stages.0.scheduler: 'NotAScheduler' is not a diffusers scheduler class"):
        preflight.check_models(spec)
    preflight.check_models(parse_spec(job(str(table), "out", [stage("txt2img", "synth:shapes",
                                                                   scheduler="DDIMScheduler")])))


@pytest.mark.parametrize("role", ["negative_prompt", "lora"])
def test_a_misspelt_optional_column_is_refused(tmp_path, role):
    """Optional columns are read when present; one renamed in the spec must be there."""
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"], "neg": ["blurry"]})
    fields = {"loras": [{"path": str(tmp_path / "a.safetensors"), "name": "a"}], "fuse_loras": False} if role == "lora" else {}
    raw = job(str(table), "out", [stage("txt2img", "synth:shapes", **fields)],
              input={"path": str(table), "columns": {role: "negg"}})
    with pytest.raises(SpecError, match=rf"input.columns.{role}: column 'negg' is not in the input table"):
        preflight.check_input(preflight.absolute_paths(parse_spec(raw)))
    # the default name, absent: optional, not refused
    preflight.check_input(preflight.absolute_paths(parse_spec(job(str(table), "out", [stage("txt2img", "synth:shapes")]))))
