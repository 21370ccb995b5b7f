"""The prepare step as a plain function (no Ray): input cells of every type a Parquet file
can hold become the pipeline's canonical columns, or fail their row with a named error."""

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline import batch as B
from pipeline.io.images import decode
from pipeline.io.prepare import RowRules, canonical_batch


def prepare(columns: dict, roles: dict | None = None, overrides: dict | None = None, id_column=None):
    rules = RowRules(
        job_seed=3, base_dir="/", storage_options={}, id_column=id_column,
        roles=roles or {"prompt": "prompt"}, overrides=overrides or {},
    )
    return canonical_batch(pa.table(columns), rules)


def test_seeds_are_taken_exactly_up_to_2_63_as_synth_records_them():
    # 2810855828219307461 is a seed synth derived and wrote to a run's metadata; a float
    # holds every integer only up to 2**53.
    seeds = [2810855828219307461, 2**53 + 1, 2**63 - 1]
    rows = prepare({"prompt": ["a", "b", "c"], "seed": pa.array(seeds, pa.int64())}, overrides={"seed": "seed"})
    assert list(rows[B.STATUS]) == ["ok", "ok", "ok"]
    assert [int(s) for s in rows[B.SEED]] == seeds

    rows = prepare({"prompt": ["a", "b", "c"], "seed": [7.0, 7.5, float("nan")]}, overrides={"seed": "seed"})
    assert list(rows[B.STATUS]) == ["ok", "failed", "ok"]
    assert rows[B.SEED][0] == 7 and rows[B.ERROR][1] == "seed: 7.5 must be a whole number in [0, 2**63)"


def test_a_row_keeps_its_id_when_a_file_beside_it_widens_a_type_or_adds_a_column():
    # Alone, the file's seed column is int64. With a pandas-written file beside it (float64,
    # as any int column with a null is), the read widens it to double; a file that brings
    # a steps column gives the older rows nulls there. None of this may change their ids,
    # which would commit them a second time on a rerun.
    alone = prepare({"prompt": ["a red circle", "a blue square"], "seed": pa.array([5, 6], pa.int64())},
                    overrides={"seed": "seed"})
    widened = prepare(
        {"prompt": ["a red circle", "a blue square"], "seed": pa.array([5.0, 6.0]), "steps": pa.array([None, None], pa.int64())},
        overrides={"seed": "seed", "steps": "steps"},
    )
    assert list(alone[B.ID]) == list(widened[B.ID])
    assert list(alone[B.SEED]) == list(widened[B.SEED]) == [5, 6]
    # ... while what a value is to the job counts: a negative prompt "5" is not seed 5
    assert prepare({"prompt": ["x"], "n": ["5"]}, roles={"prompt": "prompt", "negative_prompt": "n"})[B.ID][0] != \
        prepare({"prompt": ["x"], "n": [5]}, overrides={"seed": "n"})[B.ID][0]

    ids = prepare({"prompt": ["a", "b"], "key": [7.0, 8.0]}, id_column="key")
    assert list(ids[B.ID]) == ["7", "8"]  # as an int64 column of 7 and 8 gives them


def test_text_stored_as_binary_is_decoded_and_non_utf8_fails_its_row():
    # pandas bytes, older Hive and Spark tables: strings without Parquet's UTF8 annotation
    rows = prepare(
        {"prompt": pa.array([b"a red circle", b"\xff\xfe", b"a blue square"], pa.binary()),
         "negative": pa.array([b"blurry", None, b"\xc3\xa9t\xc3\xa9"], pa.binary())},
        roles={"prompt": "prompt", "negative_prompt": "negative"},
    )
    assert list(rows[B.PROMPT]) == ["a red circle", "", "a blue square"]
    assert list(rows[B.NEGATIVE_PROMPT]) == ["blurry", "", "été"]
    assert list(rows[B.STATUS]) == ["ok", "failed", "ok"]
    assert rows[B.ERROR][1] == "prompt: the cell is binary that is not UTF-8 text"


def test_an_image_cell_that_is_a_number_fails_its_row():
    rows = prepare({"prompt": ["a", "b"], "picture": [1.5, -3.0]}, roles={"prompt": "prompt", "image": "picture"})
    assert list(rows[B.STATUS]) == ["failed", "failed"]
    assert rows[B.ERROR][0] == "image: the 'picture' cell holds a float, not image bytes or a path"


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (4, 1))
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")  # PIL mode I;16
    for mode in ("L", "RGB"):
        pixels = decode(buffer.getvalue(), mode)
        row = pixels[0] if mode == "L" else pixels[0, :, 0]
        assert list(row) == [int(v) >> 8 for v in ramp[0]]  # 0, 17, 34, ... 255


def test_a_row_keeps_its_id_whatever_type_its_file_gives_a_value():
    # Beside another file, a string column may read as binary (pandas bytes), an int seed
    # as decimal or text, an image struct may gain a path field: the values are the same.
    roles = {"prompt": "prompt", "image": "image"}
    base = prepare({"prompt": ["a red circle"], "image": ["pics/a.png"], "seed": pa.array([5], pa.int64())},
                   roles=roles, overrides={"seed": "seed"})
    for prompt, image, seed in [
        (pa.array([b"a red circle"], pa.binary()), ["pics/a.png"], pa.array([5], pa.int64())),
        (["a red circle"], pa.array([b"pics/a.png"], pa.binary()), pa.array(["5"])),
        (["a red circle"], [{"bytes": None, "path": "pics/a.png"}], pa.array([5.0])),
    ]:
        other = prepare({"prompt": prompt, "image": image, "seed": seed}, roles=roles, overrides={"seed": "seed"})
        assert other[B.ID][0] == base[B.ID][0]
        assert other[B.SEED][0] == 5
