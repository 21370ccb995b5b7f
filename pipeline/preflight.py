"""Checks that run in the driver before any actor (and so any GPU) is started.

Each failure names the spec field to fix. They take seconds: Parquet footers, a listing,
one small probe object.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.io.reader import input_shape
from pipeline.keys import id_text
from pipeline.families import resolve_family
from pipeline.lora import check_lora, lora_source
from pipeline.models import ModelError, check_controlnet, check_model_source, model_source, pipeline_class_name
from pipeline.params import ROW_PARAMS
from pipeline.spec import JobSpec, SpecError

logger = logging.getLogger("synth.preflight")

# The row's seed plus the generation parameters a row may override.
OVERRIDE_PARAMS = ("seed", *ROW_PARAMS)


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
        if stage.get("controlnet") and model_source(stage["controlnet"]) == "local":
            stage["controlnet"] = fix(stage["controlnet"])
        for lora in stage["loras"]:
            if lora_source(lora["path"]) == "local":
                lora["path"] = fix(lora["path"])
    return JobSpec.model_validate(data)


@dataclass(frozen=True)
class InputColumns:
    """The input columns a job reads, found in any of the table's files."""

    roles: dict[str, str]  # role (prompt, image...) -> column
    overrides: dict[str, str]  # override parameter (seed, steps...) -> column
    schema: Any  # pyarrow.Schema of the whole table (every file's columns, widened types)
    rows: dict[str, int] | None = None  # each non-empty file's row count
    sizes: dict[str, int] | None = None  # and its size in bytes
    versions: dict[str, str] | None = None  # and its version (ETag, mtime)


def check_input(spec: JobSpec) -> InputColumns:
    """The columns this job reads; fail if a column the stage chain needs is missing from
    the table or from one of its files."""
    shape = input_shape(spec)
    names = set(shape.schema.names)
    # Only the roles this job uses: an `image` column in a txt2img job's table is not read.
    used = {"prompt", "negative_prompt", *spec.required_roles()}
    if any(stage.loras for stage in spec.stages):
        used.add("lora")
    columns = spec.input.columns.model_dump()
    roles = {role: columns[role] for role in used if columns[role] in names}
    needed = {f"input.columns.{role}": (getattr(spec.input.columns, role), f" ({reason})")
              for role, reason in spec.required_roles().items()}
    # An optional column (negative_prompt, lora) renamed from its default must exist: a typo
    # would otherwise run every row without it, silently.
    defaults = type(spec.input.columns).model_fields
    for role in sorted(used):
        if columns[role] != defaults[role].default:
            needed.setdefault(f"input.columns.{role}", (columns[role], ""))
    if spec.stages[0].needs_prompt:
        needed["input.columns.prompt"] = (spec.input.columns.prompt, "")
    if spec.input.id_column:
        needed["input.id_column"] = (spec.input.id_column, "")
    for field, (column, reason) in needed.items():
        if column not in names:
            raise SpecError(
                f"{field}: column {column!r} is not in the input table{reason}; "
                f"the table has: {', '.join(sorted(names))}"
            )
        lacking = shape.first_file_without(column)
        if lacking:  # the other reads would give its rows nulls: refuse it whole, by name
            raise SpecError(f"{field}: column {column!r} is not in {lacking}, one of the input's files{reason}")
    if "lora" in roles:
        for index, stage in enumerate(spec.stages):
            if stage.loras and stage.fuse_loras:
                raise SpecError(
                    f"stages.{index}.fuse_loras: rows pick an adapter through column {roles['lora']!r} "
                    "(input.columns.lora), which needs the adapters kept apart; set fuse_loras: false"
                )
    if spec.input.id_column:
        from pipeline.io.commit_log import CommitLog

        if CommitLog.of(spec).ids_checked(spec, shape.rows, shape.sizes, shape.versions):
            logger.info("input.id_column: the ids of this input were found unique by an earlier run into %s",
                        spec.output.path)
        else:
            _check_unique_ids(spec, list(shape.files), sum(shape.rows.values()))
    # Only the parameters some stage takes: a `strength` column in a txt2img-only table, or
    # the `width` and `height` of an upscale job's source images, is not read (or checked).
    taken = {"seed"}.union(*(stage.row_params() for stage in spec.stages))
    chosen = spec.input.overrides.model_dump()
    for param in OVERRIDE_PARAMS:
        if chosen[param] not in (None, param) and chosen[param] not in names and param in taken:
            raise SpecError(
                f"input.overrides.{param}: column {chosen[param]!r} is not in the input table; "
                f"the table has: {', '.join(sorted(names))}"
            )
    overrides = {param: chosen[param] for param in OVERRIDE_PARAMS if chosen[param] in names and param in taken}
    return InputColumns(roles, overrides, shape.schema, shape.rows, shape.sizes, shape.versions)


def _check_unique_ids(spec: JobSpec, files: list[str], total: int) -> None:
    """Two rows with one id would write one image key twice; refuse before any work.
    Reads the id column only of the non-empty files, unique_ids.BATCH_IDS ids at a time,
    and counts the ids in bounded memory (io/unique_ids.py). Ids are compared as the rows
    will carry them (keys.id_text: 7 and 7.0 are one id)."""
    import pyarrow.parquet as pq

    from pipeline.io import unique_ids
    from pipeline.io.reader import unreadable

    fs = storage.filesystem(spec.input.path, spec.input_storage_options())[0]

    def batches(file: str):
        try:
            with fs.open(file, "rb") as handle:
                reader = pq.ParquetFile(handle).iter_batches(
                    batch_size=unique_ids.BATCH_IDS, columns=[spec.input.id_column])
                for batch in reader:
                    yield batch.column(0)
        except Exception as error:
            raise unreadable(file, error) from None

    def ids_of_each_file():
        for file in files:
            for column in batches(file):
                yield _id_texts(column)

    count, examples = unique_ids.duplicated_ids(ids_of_each_file, total)
    if count:
        raise SpecError(
            f"input.id_column: {count} ids appear more than once in column "
            f"{spec.input.id_column!r}, e.g. {', '.join(repr(v) for v in examples)}"
        )


def _id_texts(column):
    """One batch of an id column as the rows' ids (keys.id_text), a pyarrow string array
    without nulls; a cell that is not UTF-8 is left out (that row fails in prepare, naming
    the column)."""
    import pyarrow as pa

    if pa.types.is_dictionary(column.type):  # pandas categories: compared by value
        column = column.dictionary_decode()
    column = column.drop_null()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    if pa.types.is_integer(column.type):  # Arrow writes an integer as str(int), as id_text
        return column.cast(pa.string())
    texts = []
    for value in column.to_pylist():
        try:
            texts.append(id_text(value))
        except UnicodeDecodeError:
            pass
    return pa.array([text for text in texts if text is not None], pa.string())


def check_models(spec: JobSpec) -> list[str | None]:
    """Each stage's model exists and may load; returns the revision each resolves to now
    (models.check_model_source), which the run pins for its workers and its resumes."""
    revisions = []
    for index, stage in enumerate(spec.stages):
        if stage.scheduler:
            import diffusers  # only when a spec names a scheduler: the import takes a few seconds

            if not isinstance(getattr(diffusers, stage.scheduler, None), type):
                raise SpecError(f"stages.{index}.scheduler: {stage.scheduler!r} is not a diffusers scheduler class")
        try:
            revisions.append(
                check_model_source(stage.model, stage.revision, spec.storage_options, stage.allow_pickle, stage.kind)
            )
        except ModelError as error:
            raise SpecError(f"stages.{index}.model: {error}") from None
        except Exception as error:  # unreachable endpoint, permissions
            raise SpecError(f"stages.{index}.model: cannot reach {stage.model}: {type(error).__name__}: {error}") from None
        check_family(spec, index, pipeline_class_name(stage.model, stage.revision, spec.storage_options))
        if getattr(stage, "controlnet", None):
            try:
                check_controlnet(stage.controlnet, stage.allow_pickle)
            except Exception as error:
                raise SpecError(f"stages.{index}.controlnet: {error}") from None
        for number, lora in enumerate(stage.loras):
            try:
                check_lora(lora.path, spec.storage_options)
            except Exception as error:
                raise SpecError(f"stages.{index}.loras.{number}.path: {error}") from None
    return revisions


def check_family(spec: JobSpec, index: int, pipeline_class: str | None) -> None:
    """The stage's model is of a family synth declares (the one the stage names, if any), and
    that family takes every field the stage sets. None: a hub model not cached, whose
    workers check the same once they load it."""
    stage = spec.stages[index]
    if pipeline_class is None:
        return
    try:
        family = resolve_family(stage.family, pipeline_class, stage.model)
    except ValueError as error:
        raise SpecError(f"stages.{index}.{'family' if stage.family else 'model'}: {error}") from None
    problem = family.refusal(stage.kind, stage.model_dump())
    if problem:
        field, why = problem
        detected = "" if stage.family else f" (the family detected from its {pipeline_class})"
        raise SpecError(f"stages.{index}.{field}: {why}{detected}")


def adapter_fingerprints(spec: JobSpec) -> list[str | None]:
    """Per stage, a fingerprint of its LoRA files' and ControlNet's contents (None without
    them, or where only the hub knows: a hub file's revision is not pinned), which a resume
    compares with the one models.json pinned: an adapter rewritten under the same path would
    otherwise mix two adapters' images in one output."""
    from pipeline.lora import lora_source
    from pipeline.models import _content_digest, _fingerprint, _local_fingerprint, model_source

    fingerprints = []
    for stage in spec.stages:
        entries = []
        for lora in stage.loras:
            source = lora_source(lora.path)
            if source == "local":
                entries.append((lora.name, _content_digest(Path(lora.path.removeprefix("file://")).expanduser())))
            elif source == "s3":
                fs, inner = storage.filesystem(lora.path, spec.storage_options)
                entries.append((lora.name, str(fs.info(inner).get("ETag", "")).strip('"')))
        controlnet = getattr(stage, "controlnet", None)
        if controlnet and model_source(controlnet) == "local":
            entries.append(("controlnet", _local_fingerprint(Path(controlnet.removeprefix("file://")).expanduser().resolve())))
        fingerprints.append(_fingerprint(entries) if entries else None)
    return fingerprints


def pin_models(spec: JobSpec, revisions: list[str | None]) -> JobSpec:
    """The spec the stage workers get: each stage's `revision` set to the one the driver
    resolved (a hub commit, or a `files:` fingerprint), so every actor loads that revision
    or refuses to start (models.resolve_model). The spec written beside the outputs keeps
    the user's revisions."""
    data = spec.model_dump()
    for stage, revision in zip(data["stages"], revisions):
        if revision:
            stage["revision"] = revision
    return JobSpec.model_validate(data)


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
    owners: list[list[str]] = [[] for _ in spec.stages]
    for param in overrides:
        if param == "seed":
            continue
        for index, stage in enumerate(spec.stages):
            if param == "controlnet_conditioning_scale" and not getattr(stage, "controlnet", None):
                continue  # the first stage with a ControlNet takes it
            if param in stage.row_params():
                owners[index].append(param)
                break
    return owners
