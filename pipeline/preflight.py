"""Checks that run in the driver before any actor (and so any GPU) is started.

Each failure names the spec field to fix. They take seconds: Parquet footers, a listing,
one small probe object.
"""

from __future__ import annotations

import os
import uuid

from pipeline import batch as B
from pipeline import storage
from pipeline.io.reader import input_schema
from pipeline.models import ModelError, check_model_source, model_source
from pipeline.spec import JobSpec, SpecError

# The row's seed plus the per-row generation overrides that pipeline/batch.py carries.
OVERRIDE_PARAMS = ("seed", *B.OVERRIDES)


def absolute_paths(spec: JobSpec) -> JobSpec:
    """Local paths made absolute: workers do not share the driver's working directory."""
    def fix(path: str) -> str:
        return path if storage.is_remote(path) else os.path.abspath(os.path.expanduser(path.removeprefix("file://")))

    data = spec.model_dump()
    data["input"]["path"] = fix(spec.input.path)
    data["output"]["path"] = fix(spec.output.path)
    for stage in data["stages"]:
        if model_source(stage["model"]) == "local":
            stage["model"] = fix(stage["model"])
    return JobSpec.model_validate(data)


def check_input(spec: JobSpec) -> tuple[dict[str, str], dict[str, str]]:
    """Return (role -> column, override -> column) for the columns present; fail if a column
    the stage chain needs is missing."""
    names = set(input_schema(spec).names)
    # Only the roles this job uses: an `image` column in a txt2img job's table is not read.
    used = {"prompt", "negative_prompt", *spec.required_roles()}
    columns = spec.input.columns.model_dump()
    roles = {role: columns[role] for role in used if columns[role] in names}
    for role, reason in spec.required_roles().items():
        column = getattr(spec.input.columns, role)
        if column not in names:
            raise SpecError(
                f"input.columns.{role}: column {column!r} is not in the input table ({reason}); "
                f"the table has: {', '.join(sorted(names))}"
            )
    if spec.stages[0].kind != "upscale" and "prompt" not in roles:
        raise SpecError(
            f"input.columns.prompt: column {spec.input.columns.prompt!r} is not in the input table; "
            f"the table has: {', '.join(sorted(names))}"
        )
    if spec.input.id_column:
        if spec.input.id_column not in names:
            raise SpecError(f"input.id_column: column {spec.input.id_column!r} is not in the input table")
        _check_unique_ids(spec)
    # Only the parameters some stage takes: a `strength` column in a txt2img-only table, or
    # the `width` and `height` of an upscale job's source images, is not read (or checked).
    from pipeline.stages import WORKERS

    taken = {"seed"}.union(*(WORKERS[stage.kind].params for stage in spec.stages))
    overrides = {param: param for param in OVERRIDE_PARAMS if param in names and param in taken}
    return roles, overrides


def _check_unique_ids(spec: JobSpec) -> None:
    """Two rows with one id would write one image key twice; refuse before any work.
    Reads the id column only (a few MB even for millions of rows)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.io.reader import input_files

    fs, files = input_files(spec.input.path, spec.input_storage_options())
    counts: dict = {}
    for file in files:
        with fs.open(file, "rb") as handle:
            column = pq.read_table(handle, columns=[spec.input.id_column]).column(0).cast("string")
        for item in pc.value_counts(column.drop_null()).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    duplicated = [value for value, count in counts.items() if count > 1]
    if duplicated:
        raise SpecError(
            f"input.id_column: {len(duplicated)} ids appear more than once in column "
            f"{spec.input.id_column!r}, e.g. {', '.join(repr(v) for v in duplicated[:3])}"
        )


def check_models(spec: JobSpec) -> None:
    for index, stage in enumerate(spec.stages):
        try:
            check_model_source(stage.model, stage.revision, spec.storage_options, stage.allow_pickle)
        except ModelError as error:
            raise SpecError(f"stages.{index}.model: {error}") from None
        except Exception as error:  # unreachable endpoint, permissions
            raise SpecError(f"stages.{index}.model: cannot reach {stage.model}: {type(error).__name__}: {error}") from None


def check_output(spec: JobSpec) -> None:
    """Write and delete one small object, so a read-only or misspelt output fails now, not
    after hours of generation."""
    try:
        fs, root = storage.filesystem(spec.output.path, spec.output_storage_options())
        probe = storage.join(root, f".synth-write-check-{uuid.uuid4().hex}")
        storage.write_bytes_atomic(fs, probe, b"ok")
        fs.rm_file(probe)
    except Exception as error:
        raise SpecError(f"output.path: cannot write to {spec.output.path}: {type(error).__name__}: {error}") from None


def override_owners(spec: JobSpec, overrides: dict[str, str]) -> list[list[str]]:
    """For each stage, the per-row override columns it applies: each parameter goes to the
    first stage that takes it (seed is the row's base seed, used by every stage)."""
    from pipeline.stages import WORKERS

    owners: list[list[str]] = [[] for _ in spec.stages]
    for param in overrides:
        if param == "seed":
            continue
        for index, stage in enumerate(spec.stages):
            if param in WORKERS[stage.kind].params:
                owners[index].append(param)
                break
    return owners
