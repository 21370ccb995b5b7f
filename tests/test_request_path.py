"""The request path without Ray: plain rows -> a canonical batch -> a worker holding a
pipeline it was handed -> image bytes and metadata records (what Serve builds on)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import batch as B
from pipeline.io.prepare import canonical_batch
from pipeline.io.writer import Encoding, encode_images, metadata_table, stage_info
from pipeline.keys import derive_seed
from pipeline.params import ROW_PARAMS, check_cell
from pipeline.stages import STAGES, WORKERS, MissingColumns, parse_stage
from pipeline.tiny_models import build_tiny_pipeline

STAGE = {"kind": "txt2img", "model": "tiny", "steps": 2, "width": 32, "height": 32, "batch_size": 4}


@pytest.fixture(scope="module")
def worker():
    pipe = build_tiny_pipeline("txt2img")
    pipe.set_progress_bar_config(disable=True)
    return WORKERS["txt2img"](STAGE, overrides=["steps"], pipe=pipe, revision="tiny-r1")


def test_plain_rows_run_through_a_worker_with_an_injected_pipeline(worker):
    rows = [{"prompt": "a red circle", "seed": 42}, {"prompt": "a blue square", "steps": 3}, {"prompt": " "}]
    batch = canonical_batch(rows)
    out = worker(batch)
    assert list(out[B.STATUS]) == ["ok", "ok", "failed"] and out[B.ERROR][2] == "prompt: the prompt is empty"

    # Each row equals a direct diffusers call with its seed and parameters: the row's own
    # seed, or one derived from the job seed (0) and the row's content id.
    second_seed = derive_seed(0, batch[B.ID][1])
    for row, (prompt, seed, steps) in enumerate([("a red circle", 42, 2), ("a blue square", second_seed, 3)]):
        expected = worker.pipe(prompt, num_inference_steps=steps, width=32, height=32, output_type="np",
                               generator=torch.Generator().manual_seed(seed)).images[0]
        got = B.image_view(out[B.IMAGE][row], out[B.WIDTH][row], out[B.HEIGHT][row])
        assert np.array_equal(got, (expected * 255).round().astype("uint8"))

    # Encoded and recorded without any storage: PNG keeps the pixels; the record says what ran.
    encoded = encode_images(out, Encoding("png"))
    assert encoded.data[2] is None and encoded.keys[0].startswith("images/")
    decoded = np.asarray(Image.open(io.BytesIO(encoded.data[0])))
    assert np.array_equal(decoded, B.image_view(out[B.IMAGE][0], 32, 32))
    table = metadata_table(out, (stage_info(worker.spec),), encoded).to_pylist()
    assert [r["image_uri"] for r in table] == [None, None, None]
    assert [r["stages"][0]["steps"] for r in table] == [2, 3, None]
    assert table[0]["seed"] == 42 and table[0]["stages"][0]["model_revision"] == "tiny-r1"
    assert table[2]["stages"][0]["device"] == "cpu" and table[2]["error"] == "prompt: the prompt is empty"


def test_a_batch_without_the_columns_a_stage_reads_is_refused_by_name(worker):
    with pytest.raises(MissingColumns, match=r"stages.0 \(txt2img\): the batch lacks the column\(s\) negative_prompt"):
        worker({B.ID: np.array(["a"], object), B.PROMPT: np.array(["x"], object)})


@pytest.mark.parametrize("param", ROW_PARAMS)
def test_a_row_override_and_the_spec_accept_the_same_values(param):
    # One declaration of each parameter's bounds: a value a stage's field refuses, a row's
    # override cell refuses too, and the other way round.
    kind = next(kind for kind, declared in STAGES.items() if param in declared.model_fields)
    needs = {"controlnet": "c"} if param == "controlnet_conditioning_scale" else {}  # applies only with one
    for value in (-1, 0, 0.5, 1, 2, 7.5, 8, 12, 30, 64, 999, 1000, 1001, 4096):
        try:
            parse_stage({"kind": kind, "model": "m", "steps": 1000, **needs, param: value})
            spec_ok = True
        except Exception:
            spec_ok = False
        assert (check_cell(param, value)[1] is None) == spec_ok, (param, value)


def test_the_readme_example_of_the_request_path_runs():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("The request path needs no Ray Data", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(code, scope)
    assert list(scope["out"][B.STATUS]) == ["ok"]
    assert scope["records"].to_pylist()[0]["stages"][0]["model_revision"].startswith("files:")
    assert scope["encoded"].data[0].startswith(b"\x89PNG")
