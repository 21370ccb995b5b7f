"""Stage workers as plain objects (no Ray): a batch in, a batch out, equal to diffusers."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import half_mask, png_bytes

from pipeline import batch as B
from pipeline.io.images import decode
from pipeline.io.prepare import RowRules, canonical_batch
from pipeline.keys import stage_seed
from pipeline.stages import WORKERS


def prepared(columns: dict, roles: dict, overrides: dict | None = None):
    table = pa.table(columns)
    rules = RowRules(job_seed=3, base_dir="/", storage_options={}, id_column=None, roles=roles, overrides=overrides or {})
    return canonical_batch(table, rules)


def pixels(batch, row):
    return B.image_view(batch[B.IMAGE][row], batch[B.WIDTH][row], batch[B.HEIGHT][row])


def to_uint8(images: np.ndarray) -> np.ndarray:
    # diffusers' own float -> uint8 rule (numpy_to_pil)
    return (images * 255).round().astype("uint8")


def generators(batch, index=0):
    return [torch.Generator().manual_seed(stage_seed(int(s), index)) for s in batch[B.SEED]]


PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def test_txt2img_equals_a_direct_diffusers_call(tiny):
    batch = prepared({"prompt": PROMPTS}, {"prompt": "prompt"})
    worker = WORKERS["txt2img"]({"kind": "txt2img", "model": tiny["txt2img"], "steps": 2, "width": 32, "height": 32})
    out = worker(batch)
    assert list(out[B.STATUS]) == ["ok"] * 3
    expected = worker.pipe(
        PROMPTS, num_inference_steps=2, width=32, height=32, generator=generators(batch), output_type="np"
    ).images
    assert np.array_equal(np.stack([pixels(out, i) for i in range(3)]), to_uint8(expected))
    assert list(out["s0_steps"]) == [2, 2, 2]


def test_img2img_equals_a_direct_diffusers_call(tiny):
    from PIL import Image

    images = [png_bytes((200, 30, 30)), png_bytes((30, 30, 200))]
    batch = prepared({"prompt": PROMPTS[:2], "image": images}, {"prompt": "prompt", "image": "image"})
    spec = {"kind": "img2img", "model": tiny["img2img"], "steps": 4, "strength": 0.5}
    worker = WORKERS["img2img"](spec)
    out = worker(batch)
    inputs = [Image.fromarray(decode(data, "RGB")) for data in images]
    expected = worker.pipe(
        PROMPTS[:2], image=inputs, strength=0.5, num_inference_steps=4, generator=generators(batch), output_type="np"
    ).images
    assert np.array_equal(np.stack([pixels(out, i) for i in range(2)]), to_uint8(expected))


def test_inpaint_equals_a_direct_diffusers_call(tiny):
    from PIL import Image

    batch = prepared(
        {"prompt": PROMPTS[:2], "image": [png_bytes()] * 2, "mask": [half_mask()] * 2},
        {"prompt": "prompt", "image": "image", "mask": "mask"},
    )
    worker = WORKERS["inpaint"]({"kind": "inpaint", "model": tiny["inpaint"], "steps": 2})
    out = worker(batch)
    assert list(out[B.STATUS]) == ["ok", "ok"]
    image = Image.fromarray(decode(png_bytes(), "RGB"))
    mask = Image.fromarray(decode(half_mask(), "L"))
    expected = worker.pipe(
        PROMPTS[:2],
        image=[image] * 2,
        mask_image=[mask] * 2,
        strength=1.0,
        width=32,
        height=32,
        num_inference_steps=2,
        generator=generators(batch),
        output_type="np",
    ).images
    assert np.array_equal(np.stack([pixels(out, i) for i in range(2)]), to_uint8(expected))


def test_upscale_makes_the_image_4x_and_equals_diffusers(tiny):
    from PIL import Image

    batch = prepared({"prompt": ["x"], "image": [png_bytes(size=(16, 16))]}, {"prompt": "prompt", "image": "image"})
    worker = WORKERS["upscale"]({"kind": "upscale", "model": tiny["upscale"], "steps": 2})
    out = worker(batch)
    assert (out[B.WIDTH][0], out[B.HEIGHT][0]) == (64, 64)
    expected = worker.pipe(
        ["x"],
        image=[Image.fromarray(decode(png_bytes(size=(16, 16)), "RGB"))],
        noise_level=20,
        num_inference_steps=2,
        guidance_scale=9.0,
        generator=generators(batch),
        output_type="np",
    ).images
    assert np.array_equal(pixels(out, 0), to_uint8(expected)[0])


def test_per_row_overrides_split_the_batch_into_uniform_calls(tiny):
    batch = prepared(
        {"prompt": PROMPTS, "steps": [1, None, 3], "width": [None, 48, None]},
        {"prompt": "prompt"},
        overrides={"steps": "steps", "width": "width"},
    )
    worker = WORKERS["txt2img"](
        {"kind": "txt2img", "model": tiny["txt2img"], "steps": 2, "width": 32, "height": 32},
        overrides=["steps", "width"],
    )
    calls = []
    original = worker.generate
    worker.generate = lambda group: calls.append((group.steps, group.width, len(group.rows))) or original(group)
    out = worker(batch)
    assert sorted(calls) == [(1, 32, 1), (2, 48, 1), (3, 32, 1)]
    assert list(out["s0_steps"]) == [1, 2, 3]
    assert list(out[B.WIDTH]) == [32, 48, 32]


def test_rows_that_share_parameters_go_in_one_call(tiny):
    batch = prepared({"prompt": PROMPTS}, {"prompt": "prompt"})
    worker = WORKERS["txt2img"]({"kind": "txt2img", "model": tiny["txt2img"], "steps": 2, "width": 32, "height": 32})
    calls = []
    original = worker.generate
    worker.generate = lambda group: calls.append(len(group.rows)) or original(group)
    worker(batch)
    assert calls == [3]


def test_failed_rows_pass_through_and_mask_size_mismatch_fails_only_that_row(tiny):
    batch = prepared(
        {
            "prompt": ["a", "b", "c"],
            "image": [png_bytes(), b"not an image", png_bytes()],
            "mask": [half_mask(), half_mask(), half_mask(size=(16, 16))],
        },
        {"prompt": "prompt", "image": "image", "mask": "mask"},
    )
    worker = WORKERS["inpaint"]({"kind": "inpaint", "model": tiny["inpaint"], "steps": 2})
    out = worker(batch)
    assert list(out[B.STATUS]) == ["ok", "failed", "failed"]
    assert out[B.ERROR][1].startswith("image: cannot decode")
    assert out[B.ERROR][2].startswith("mask: its size 16x16 differs")


@pytest.mark.parametrize("kind", ["img2img", "upscale"])
def test_stage_without_input_image_fails_the_row(tiny, kind):
    batch = prepared({"prompt": ["a"]}, {"prompt": "prompt"})
    worker = WORKERS[kind]({"kind": kind, "model": tiny[kind], "steps": 2})
    out = worker(batch)
    assert out[B.STATUS][0] == "failed" and "no input image" in out[B.ERROR][0]


def test_string_uri_columns_with_an_earlier_row_error_do_not_crash(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    batch = prepared(
        {"prompt": ["ok", "", "ok"], "image": [str(tmp_path / "a.png")] * 3, "steps": [2, 2, float("inf")]},
        {"prompt": "prompt", "image": "image"},
        overrides={"steps": "steps"},
    )
    assert list(batch[B.STATUS]) == ["ok", "failed", "failed"]
    assert batch[B.ERROR][1] == "prompt: the prompt is empty"
    assert batch[B.ERROR][2] == "steps: inf is not a finite number"
    assert batch[B.WIDTH][0] == 32


@pytest.mark.parametrize(
    "fields, size",
    [({}, (64, 32)), ({"width": 32}, (32, 16)), ({"height": 16}, (32, 16)), ({"width": 40, "height": 40}, (40, 40))],
)
def test_img2img_output_size_follows_width_and_height_or_the_input(tiny, fields, size):
    # Neither set: the input's size. One set: the other side keeps the input's aspect ratio.
    batch = prepared({"prompt": ["a"], "image": [png_bytes(size=(64, 32))]}, {"prompt": "prompt", "image": "image"})
    worker = WORKERS["img2img"]({"kind": "img2img", "model": tiny["img2img"], "steps": 2, **fields})
    out = worker(batch)
    assert out[B.STATUS][0] == "ok"
    assert (out[B.WIDTH][0], out[B.HEIGHT][0]) == size


def test_out_of_memory_fails_that_group_only_and_names_the_fields_to_lower(tiny):
    class SmallMemory(WORKERS["txt2img"]):
        """A device that fits one image per call, and breaks on a given prompt."""

        def generate(self, group):
            if "broken" in group.prompts:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            if len(group.rows) > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().generate(group)

    batch = prepared(
        {"prompt": PROMPTS, "steps": [2, 2, 3]}, {"prompt": "prompt"}, overrides={"steps": "steps"}
    )
    worker = SmallMemory(
        {"kind": "txt2img", "model": tiny["txt2img"], "steps": 2, "width": 32, "height": 32}, overrides=["steps"]
    )
    out = worker(batch)
    assert list(out[B.STATUS]) == ["failed", "failed", "ok"]
    assert out[B.ERROR][0] == out[B.ERROR][1] == (
        "stages.0 (txt2img): out of cpu memory for 2 images at 32x32 px; run with a smaller "
        "stages.0.batch_size, or stages.0.width and height into a new output.path: "
        "CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    # Any other runtime error is not the rows' fault: it still ends the call.
    with pytest.raises(RuntimeError, match="illegal memory access"):
        worker(prepared({"prompt": ["broken"]}, {"prompt": "prompt"}))


def test_decode_applies_the_exif_orientation_of_phone_photos():
    import io

    from PIL import Image

    # Stored 16 wide x 8 high, left half red; orientation 6 says "rotate 90 degrees clockwise
    # to view", so the upright image is 8 wide x 16 high with the red half on top.
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "PNG", exif=exif)
    upright = decode(buffer.getvalue(), "RGB")
    assert upright.shape == (16, 8, 3)
    assert (upright[:8, :, 0] == 255).all() and (upright[8:, :, 0] == 0).all()
    assert decode(buffer.getvalue(), "L").shape == (16, 8)


def test_out_of_memory_in_upscale_names_its_input_and_output_size(tiny):
    class SmallMemory(WORKERS["upscale"]):
        def generate(self, group):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    batch = prepared({"prompt": ["a"], "image": [png_bytes(size=(16, 8))]}, {"prompt": "prompt", "image": "image"})
    out = SmallMemory({"kind": "upscale", "model": tiny["upscale"], "steps": 2}, index=1)(batch)
    assert out[B.ERROR][0] == (
        "stages.1 (upscale): out of cpu memory for 1 images at 16x8 px in (64x32 px out); run with a smaller "
        "stages.1.batch_size, or smaller input images into a new output.path: CUDA out of memory. Tried to allocate 8.00 GiB"
    )


def test_a_mask_drawn_on_the_input_image_fits_after_an_earlier_stage_resized_it(tiny):
    # img2img -> inpaint on a 100x100 photo and its mask: img2img makes it 96x96 (multiple
    # of 8), or 64x48 when asked; inpaint gets the mask resized as the image was.
    for img2img_size, expected in [({}, (96, 96)), ({"width": 64, "height": 48}, (64, 48))]:
        batch = prepared(
            {"prompt": ["a red circle"], "image": [png_bytes(size=(100, 100))], "mask": [half_mask(size=(100, 100))]},
            {"prompt": "prompt", "image": "image", "mask": "mask"},
        )
        first = WORKERS["img2img"]({"kind": "img2img", "model": tiny["img2img"], "steps": 2, **img2img_size})
        second = WORKERS["inpaint"]({"kind": "inpaint", "model": tiny["inpaint"], "steps": 2}, index=1)
        out = second(first(batch))
        assert list(out[B.STATUS]) == ["ok"], out[B.ERROR][0]
        assert (out[B.WIDTH][0], out[B.HEIGHT][0]) == expected

    # a mask drawn on the resized image fits too (it was the only size taken before)
    batch = prepared(
        {"prompt": ["a red circle"], "image": [png_bytes(size=(100, 100))], "mask": [half_mask(size=(64, 48))]},
        {"prompt": "prompt", "image": "image", "mask": "mask"},
    )
    assert list(second(first(batch))[B.STATUS]) == ["ok"]

    # a mask that fits neither the input image nor the one inpaint receives still fails, named
    batch = prepared(
        {"prompt": ["a red circle"], "image": [png_bytes(size=(100, 100))], "mask": [half_mask(size=(96, 96))]},
        {"prompt": "prompt", "image": "image", "mask": "mask"},
    )
    out = second(first(batch))
    assert out[B.ERROR][0] == ("mask: its size 96x96 fits neither the input image's 100x100 nor the image's "
                               "64x48 at stages.1 (inpaint)")
