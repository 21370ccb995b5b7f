"""Turn input rows into the pipeline's canonical columns (see pipeline/batch.py).

Runs as a Ray Data CPU task between the read and the first stage, so fetching, decoding
and checking the input never sits on a GPU actor's critical path. Every problem with a row
(an undecodable image, a bad override value, an empty prompt) fails that row alone, with a
message that names the column.
"""

from __future__ import annotations

import math
import time
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import numpy as np

from pipeline import batch as B
from pipeline.io import fetch, images
from pipeline.keys import content_id, derive_seed, id_text
from pipeline.params import ROW_PARAMS, check_cell


ROLES = ("prompt", "negative_prompt", "image", "mask", "lora", "control_image")


@dataclass(frozen=True)
class RowRules:
    """What a row means to the job: where its id, seed, prompt, images and parameter
    overrides come from, and the limits its inputs must keep (plain data, sent to tasks)."""

    job_seed: int = 0
    # relative image paths resolve against this folder (the input table's)
    base_dir: str = ""
    storage_options: dict[str, Any] = field(default_factory=dict)
    id_column: str | None = None
    # role (prompt, image...) -> column, only for the roles this job uses whose column
    # exists; None: each role present is read from the column of its own name
    roles: dict[str, str] | None = None
    # override parameter (seed, steps...) -> column, only for those some stage takes;
    # None: each parameter present is read from the column of its own name
    overrides: dict[str, str] | None = None
    max_image_pixels: int | None = None
    # the most bytes an image or mask may have (fetched or inline); None: derived from the
    # pixel budget (images.byte_limit), so a fetch is bounded whatever the caller sets
    max_image_bytes: int | None = None
    # http(s):// image cells are fetched only when allowed, each within http_timeout_s
    allow_http: bool = False
    http_timeout_s: float = 30.0
    # the first stage needs a non-empty prompt (txt2img, img2img, inpaint do; upscale not)
    prompt_required: bool = True

    def for_columns(self, names) -> "RowRules":
        """These rules with the roles and overrides left to defaults read from `names`."""
        roles = self.roles if self.roles is not None else {role: role for role in ROLES if role in names}
        overrides = self.overrides
        if overrides is None:
            overrides = {param: param for param in ("seed", *ROW_PARAMS) if param in names}
        return replace(self, roles=roles, overrides=overrides)

    def columns(self) -> list[str]:
        """The input columns these rules read (roles and overrides must be set)."""
        names = list(self.roles.values()) + list(self.overrides.values())
        if self.id_column:
            names.append(self.id_column)
        return list(dict.fromkeys(names))

    def byte_limit(self) -> int:
        return images.byte_limit(self.max_image_pixels, self.max_image_bytes)


@dataclass(frozen=True)
class RowSource:
    """How a batch job's input table is read and prepared (plain data, sent to tasks)."""

    rules: RowRules
    # rows a previous run committed: their shards are dropped here, before any image is
    # fetched, when every row is committed; else these rows ride along unwritten
    skip_ids: frozenset[str] = frozenset()
    # pyarrow.Schema of the whole table, every file's columns with their types widened
    # (preflight's InputColumns.schema); None: each file's own types
    table_schema: Any = None
    # the input's shards (pipeline/io/shards.py) and where its files are read from
    shards: Any = None
    input_path: str = ""

    def columns(self) -> list[str]:
        return self.rules.columns()

    def read_schema(self):
        """The columns read, with the whole table's types: the distributed read casts
        each file to them (a file without a column gets nulls, a dictionary-encoded
        column is decoded), so no two blocks disagree."""
        if self.table_schema is None:
            return None
        import pyarrow as pa

        return pa.schema([self.table_schema.field(name) for name in self.columns()])


def _seed(value: Any) -> tuple[int | None, str | None]:
    """The row's own seed, or None (use the derived one) for a null or NaN cell. Integers
    are taken as they are: a float holds every int only up to 2**53, and the seeds synth
    derives and records are 63-bit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None, None
    try:
        if isinstance(value, bool):
            raise TypeError
        seed = int(value)
        if not isinstance(value, (str, bytes)) and seed != value:  # exact for int, float, Decimal
            raise ValueError
        if not 0 <= seed < 2**63:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        return None, f"seed: {value!r} must be a whole number in [0, 2**63)"
    return seed, None


def _as_read(name: str, value: Any) -> Any:
    """A cell as the job reads it, for its content id: decoded text, an image's bytes or URI
    text, a parsed number. Files beside each other may store one column in different types
    (string and binary, int and float or decimal or string, an image struct with or without
    a path field); reading them together widens the type, which must not change an id."""
    if value is None:
        return None
    if name in ("prompt", "negative_prompt", "lora"):
        try:
            return value if isinstance(value, str) else id_text(value)
        except UnicodeDecodeError:
            return value
    if name in ("image", "mask", "control_image"):
        value = images.cell_value(value)
        if isinstance(value, (bytes, bytearray)) and images.looks_like_uri(value):
            return bytes(value).decode("utf-8")
        return value
    if name == "seed":
        seed, problem = _seed(value)
        return value if problem else seed
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return value
    return None if math.isnan(number) else number


# Default-ignorable characters outside category Cf (Hangul fillers, variation selectors, the
# combining grapheme joiner...): invisible, like the Cf ones (zero-width space, BOM, tags).
_IGNORABLE = frozenset([0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180F, 0x3164, 0xFFA0,
                        *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])


def _blank(text: str) -> bool:
    """True when the text shows nothing: only whitespace, control and format characters
    (zero-width space and joiners, word joiner, BOM, U+180E...) or other invisible ones."""
    return all(char.isspace() or unicodedata.category(char) in ("Cc", "Cf") or ord(char) in _IGNORABLE
               for char in text)


def _texts(values: list[Any], label: str, errors: list[str | None]) -> list[str | None]:
    """A text column's cells as str (None stays None). Files written without Parquet's UTF8
    annotation (pandas bytes, older Hive and Spark tables) hold text as binary: decoded, or
    the row fails when it is not UTF-8. Numbers are text the way ids are (7.0 is "7")."""
    texts: list[str | None] = []
    for i, value in enumerate(values):
        try:
            texts.append(value if isinstance(value, str) else id_text(value))
        except UnicodeDecodeError:
            errors[i] = errors[i] or f"{label}: the cell is binary that is not UTF-8 text"
            texts.append(None)
    return texts


def _load_images(values: list[Any], rules: RowRules, mode: str, role: str, errors: list[str | None]):
    """Fetch (if URIs) and decode one image column; a failure marks that row only."""
    count = len(values)
    limit = rules.byte_limit()
    values = [images.cell_value(v) for v in values]
    encoded: list[bytes | Exception | None] = [None] * count
    uri_rows = [i for i, v in enumerate(values) if v is not None and errors[i] is None and images.looks_like_uri(v)]
    uris = {i: images.resolve_uri(values[i], rules.base_dir) for i in uri_rows}
    fetched = fetch.fetch_all(list(uris.values()), rules.storage_options, limit, rules.allow_http, rules.http_timeout_s)
    for i, data in zip(uri_rows, fetched):
        encoded[i] = data
    for i, value in enumerate(values):
        if encoded[i] is None and value is not None and i not in uris and errors[i] is None:
            if isinstance(value, (bytes, bytearray, memoryview)):
                encoded[i] = bytes(value)
                if len(encoded[i]) > limit:  # one rule for every image, fetched or inline
                    errors[i] = f"{role}: the '{rules.roles[role]}' cell holds {fetch.too_large(len(value), limit)}"
            else:  # a number, a list: bytes(5) would make five zero bytes, bytes(1.5) raise
                kind = type(value).__name__
                errors[i] = f"{role}: the '{rules.roles[role]}' cell holds a {kind}, not image bytes or a path"
    raws, widths, heights = [b""] * count, np.zeros(count, np.int64), np.zeros(count, np.int64)
    for i, data in enumerate(encoded):
        if errors[i] is not None:
            continue
        if data is None:
            errors[i] = f"{role}: the '{rules.roles[role]}' cell is empty"
            continue
        if isinstance(data, Exception):
            # a refusal says what it refused; other errors (missing file, S3 denied) need their type
            cause = str(data) if isinstance(data, fetch.Refused) else f"{type(data).__name__}: {data}"
            errors[i] = f"{role}: cannot fetch {fetch.shown(uris[i])}: {cause}"
            continue
        try:
            pixels = images.decode(data, mode, rules.max_image_pixels)
        except Exception as error:
            errors[i] = f"{role}: cannot decode the image: {images.describe_decode_error(error)}"
            continue
        raws[i], heights[i], widths[i] = pixels.tobytes(), pixels.shape[0], pixels.shape[1]
    return B.object_column(raws), widths, heights


def _columns(rows) -> dict[str, list[Any]]:
    """Rows as lists of cells by column: a pyarrow table, a mapping of columns, or an
    iterable of row dicts (a key missing from a row is an empty cell)."""
    if hasattr(rows, "column_names"):  # pyarrow Table or RecordBatch
        return {name: rows.column(name).to_pylist() for name in rows.column_names}
    if isinstance(rows, Mapping):
        return {name: list(values) for name, values in rows.items()}
    rows = list(rows)
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


def canonical_batch(rows, rules: RowRules = RowRules(), done: Iterable[str] = frozenset()) -> dict[str, np.ndarray]:
    """Input rows -> the pipeline's canonical columns (pipeline/batch.py), ready for a stage
    worker. Needs no Ray: the batch job's prepare step, Serve and tests all come here.

    rows: a pyarrow table, a mapping of columns, or row dicts. done: ids of rows already
    committed; a batch of only such rows comes out empty, others carry them as batch mates.
    """
    started = time.perf_counter()
    data = _columns(rows)
    rules = rules.for_columns(data)
    missing = [name for name in rules.columns() if name not in data]
    if missing:
        raise KeyError(f"the rows lack the column(s) {', '.join(missing)}")
    count = len(next(iter(data.values()), []))
    data = {name: data[name] for name in rules.columns()}
    errors: list[str | None] = [None] * count
    done = done if isinstance(done, (set, frozenset)) else frozenset(done)

    # 1. Row ids: the id column, or a hash of everything the job reads from the row.
    fields = {**rules.roles, **rules.overrides}  # what a value is to the job -> its column

    def row_id_from_content(i: int) -> str:
        return content_id({name: _as_read(name, data[column][i]) for name, column in fields.items()})

    if rules.id_column:
        ids = _texts(data[rules.id_column], rules.id_column, errors)
        for i, row_id in enumerate(ids):
            if row_id is None:
                errors[i] = errors[i] or f"{rules.id_column}: the row id is empty"
                ids[i] = row_id_from_content(i)
    else:
        ids = [row_id_from_content(i) for i in range(count)]
    # A resumed run drops a shard (this call's rows) whose rows are all committed. A run
    # commits each shard in one file, so a shard is partly committed only when the input
    # changed under the same input.path (rows added, removed or reordered) or an identical
    # row (same content id) was committed in another shard. Such a shard keeps its committed
    # rows as batch mates, generated again but never written: the other rows get the batch
    # mates, so the bytes, of a clean run of this input, and the shard stays whole (its
    # batches are cut from all of its rows).
    committed = [row_id in done for row_id in ids]
    if count and all(committed):
        data = {name: [] for name in data}
        ids, errors, committed, count = [], [], [], 0

    # 2. Seeds: the row's own seed column, else derived from the job seed and the row id.
    seed_column = rules.overrides.get("seed")
    seeds = np.empty(count, np.int64)
    for i in range(count):
        own, problem = _seed(data[seed_column][i]) if seed_column else (None, None)
        errors[i] = errors[i] or problem
        seeds[i] = own if own is not None else derive_seed(rules.job_seed, ids[i])

    prompts = [v or "" for v in _texts(data.get(rules.roles.get("prompt"), [None] * count), "prompt", errors)]
    negatives = _texts(data.get(rules.roles.get("negative_prompt"), [None] * count), "negative_prompt", errors)
    if rules.prompt_required:
        for i, prompt in enumerate(prompts):
            if _blank(prompt):
                errors[i] = errors[i] or "prompt: the prompt is empty"
    out: dict[str, np.ndarray] = {
        B.ID: B.object_column(ids),
        B.PROMPT: B.object_column(prompts),
        B.NEGATIVE_PROMPT: B.object_column([v or "" for v in negatives]),
        B.LORA: B.object_column([v or "" for v in _texts(data.get(rules.roles.get("lora"), [None] * count), "lora",
                                                           errors)]),
        B.SEED: seeds,
    }
    # 3. Per-row parameter overrides (NaN = use the stage's value), checked here.
    for param in ROW_PARAMS:
        column = rules.overrides.get(param)
        values = np.full(count, np.nan)
        if column:
            for i, cell in enumerate(data[column]):
                values[i], problem = check_cell(param, cell)
                errors[i] = errors[i] or problem
        out[B.override_column(param)] = values

    # 4. Images and masks: fetched and decoded here, off the GPU actors.
    for role, mode, names in (
        ("image", "RGB", (B.IMAGE, B.WIDTH, B.HEIGHT)),
        ("mask", "L", (B.MASK, B.MASK_WIDTH, B.MASK_HEIGHT)),
        ("control_image", "RGB", (B.CONTROL, B.CONTROL_WIDTH, B.CONTROL_HEIGHT)),
    ):
        if role in rules.roles:
            columns = _load_images(data[rules.roles[role]], rules, mode, role, errors)
        else:
            columns = (B.object_column([b""] * count), np.zeros(count, np.int64), np.zeros(count, np.int64))
        out.update(zip(names, columns))
    out[B.SOURCE_WIDTH], out[B.SOURCE_HEIGHT] = out[B.WIDTH].copy(), out[B.HEIGHT].copy()

    out[B.COMMITTED] = np.array(committed, dtype=bool)
    out[B.STATUS] = B.object_column([B.OK if e is None else B.FAILED for e in errors])
    out[B.ERROR] = B.object_column([e or "" for e in errors])
    out[B.PREPARE_SECONDS] = np.full(count, (time.perf_counter() - started) / max(count, 1))
    out[B.QUEUE_SECONDS] = np.zeros(count)
    out[B.HANDOFF_AT] = B.handed_off(count)
    return out


def prepare_rows(table, source: RowSource) -> dict[str, np.ndarray]:
    """Input rows, as read, to canonical columns, with the source's rules; rows an earlier
    run committed are skipped or ride along (the batch job's step is prepare_shards)."""
    return canonical_batch(table, source.rules, source.skip_ids)


def prepare_shards(items, source: RowSource) -> dict[str, np.ndarray]:
    """The batch job's read-and-prepare step (a Ray Data task): the shards whose numbers
    `items` holds (its `shard` column), read from the input files and turned into
    canonical columns, one shard after another."""
    from pipeline import storage
    from pipeline.io.reader import read_rows

    fs = storage.filesystem(source.input_path, source.rules.storage_options)[0]
    versions = source.shards.file_versions()
    numbers, tables = [], []
    for shard in items.column("shard").to_pylist():
        tables.append(read_rows(fs, source.shards.pieces(shard), source.columns(), source.read_schema(), versions))
        numbers += [shard] * tables[-1].num_rows
    import pyarrow as pa

    out = canonical_batch(pa.concat_tables(tables), source.rules, source.skip_ids)
    # canonical_batch drops a shard whose every row is committed; else it keeps every row.
    out[B.SHARD] = np.array(numbers if len(out[B.ID]) else [], np.int64)
    return out
