"""Model families (pipeline/families.py): each family's tiny model runs through the Ray
pipeline and equals a direct diffusers call; fields a family would ignore are refused,
naming the field, before any GPU is held; the metadata records the arguments passed."""

import json

import numpy as np
import pytest
import torch
from conftest import job, read_metadata, stage, write_table

from pipeline import preflight
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(300)  # a deadlocked Ray job hangs silently; fail instead

# Families whose tiny model the session builds (sd is conftest's `tiny`).
STYLES = ("sd2", "sdxl", "sd-turbo", "sdxl-turbo", "sd3", "flux", "pixart-sigma", "kandinsky22")


@pytest.fixture(scope="session")
def family_models(tmp_path_factory, tiny) -> dict[str, str]:
    """A tiny txt2img folder per checkpoint style (img2img and inpaint load the same folder)."""
    from pipeline.tiny_models import write_tiny_model

    root = tmp_path_factory.mktemp("families")
    models = {style: str(write_tiny_model(root / style, "txt2img", style)) for style in STYLES}
    return {"sd": tiny["txt2img"], **models}


def pixels_of(row) -> np.ndarray:
    from PIL import Image

    assert row["status"] == "ok", row["error"]
    return np.asarray(Image.open(row["image_uri"]).convert("RGB"))


def direct(pipeline_class: str, model: str, seed: int, **arguments) -> np.ndarray:
    """The image diffusers makes from the model folder, as uint8 (diffusers' own rounding)."""
    import diffusers

    pipe = getattr(diffusers, pipeline_class).from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator("cpu").manual_seed(seed)]
    # One thread, as the stage actors run here (a GPU stage's CPU share): another thread
    # count sums in another order, and rounding can move a pixel by one level.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = pipe(generator=generator, output_type="np", **arguments).images
    finally:
        torch.set_num_threads(threads)
    return (images[0] * 255).round().astype("uint8")


# (style, the family the stage names (None: detected), guidance_scale, the family recorded,
# the family's own arguments, as a direct call gives them)
PIXART = {"use_resolution_binning": False, "clean_caption": False}
CASES = [
    ("sd2", None, 5.0, "sd", {}),  # v-prediction, from the scheduler's config
    ("sdxl", None, 5.0, "sdxl", {}),
    ("sd-turbo", "sd-turbo", None, "sd-turbo", {}),  # the family's defaults: 4 steps, guidance 0
    ("sdxl-turbo", "sdxl-turbo", None, "sdxl-turbo", {}),
    ("sd3", None, 4.0, "sd3", {}),  # a transformer denoiser; T5 as its third text encoder
    ("flux", None, 3.5, "flux", {}),  # guidance_scale feeds its guidance embedding
    ("pixart-sigma", None, 4.5, "pixart", PIXART),  # binning off: 32 px is made at 32 px
]


@pytest.mark.parametrize("style, named, guidance, recorded, own", CASES, ids=[case[0] for case in CASES])
def test_a_family_runs_through_the_pipeline_and_equals_diffusers(ray_cluster, family_models, tmp_path, style, named,
                                                                 guidance, recorded, own):
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"]})
    fields = {"family": named} if named else {"steps": 2}
    if guidance is not None:
        fields["guidance_scale"] = guidance
    spec = job(table, str(tmp_path / "out"), [stage("txt2img", family_models[style], batch_size=1, **fields)])
    if named:
        del spec["stages"][0]["steps"]  # the family's default
    run_job(parse_spec(spec))
    [row] = read_metadata(str(tmp_path / "out"))
    record = row["stages"][0]
    steps = 2 if not named else 4
    expected = direct("AutoPipelineForText2Image", family_models[style], record["seed"], prompt=["a red circle"],
                      num_inference_steps=steps, guidance_scale=guidance if guidance is not None else 0.0,
                      width=32, height=32, **own)
    assert np.array_equal(pixels_of(row), expected)
    assert record["family"] == recorded
    arguments = json.loads(record["arguments"])
    assert arguments["num_inference_steps"] == steps and arguments["width"] == 32
    assert {name: arguments[name] for name in own} == own
    if "sdxl" in style:  # its size conditioning, passed as the size generated at (its default)
        assert (arguments["original_size"], arguments["target_size"]) == ([32, 32], [32, 32])
        assert arguments["crops_coords_top_left"] == [0, 0]
    else:
        assert "original_size" not in arguments


def test_sdxl_img2img_after_txt2img_equals_diffusers(ray_cluster, family_models, tmp_path):
    from PIL import Image

    model = family_models["sdxl"]
    table = write_table(tmp_path / "in.parquet", {"prompt": ["a blue square"], "negative_prompt": ["blurry"]})
    spec = job(table, str(tmp_path / "out"), [stage("txt2img", model, batch_size=1, guidance_scale=3.0),
                                              stage("img2img", model, batch_size=1, strength=0.5, steps=4,
                                                    guidance_scale=3.0)])
    run_job(parse_spec(spec))
    [row] = read_metadata(str(tmp_path / "out"))
    first, second = row["stages"]
    arguments = dict(prompt=["a blue square"], negative_prompt=["blurry"], guidance_scale=3.0)
    made = direct("AutoPipelineForText2Image", model, first["seed"], num_inference_steps=2, width=32, height=32,
                  **arguments)
    refined = direct("AutoPipelineForImage2Image", model, second["seed"], image=[Image.fromarray(made)],
                     strength=0.5, num_inference_steps=4, **arguments)
    assert np.array_equal(pixels_of(row), refined)
    assert json.loads(second["arguments"])["original_size"] == [32, 32]
    assert (first["family"], second["family"]) == ("sdxl", "sdxl")


def spec_with(model: str, **fields) -> dict:
    return job("in.parquet", "out", [{"kind": "txt2img", "model": model, **fields}])


def error_of(raw: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return str(caught.value)


def test_a_named_family_refuses_what_it_would_ignore_at_validation():
    assert "stages.0.negative_prompt: sdxl-turbo ignores negative_prompt when guidance_scale <= 1 (it is 0)" in \
        error_of(spec_with("m", family="sdxl-turbo", negative_prompt="blurry"))
    assert "stages.0.kind: the sdxl family has no upscale pipeline" in \
        error_of(job("in.parquet", "out", [{"kind": "upscale", "model": "m", "family": "sdxl"}]))
    assert "stages.0.family: Input should be 'sd'" in error_of(spec_with("m", family="sd4"))
    assert "stages.0.negative_prompt: flux ignores negative_prompt: its guidance_scale feeds a guidance embedding" in \
        error_of(spec_with("m", family="flux", guidance_scale=3.5, negative_prompt="blurry"))
    # Its defaults fill only what the stage leaves out; guidance above 1 takes a negative prompt.
    turbo = parse_spec(spec_with("m", family="sd-turbo", steps=2, guidance_scale=2.0, negative_prompt="x")).stages[0]
    assert (turbo.steps, turbo.guidance_scale) == (2, 2.0)


def test_preflight_detects_the_family_and_refuses_before_any_gpu(family_models):
    spec = parse_spec(spec_with(family_models["sd"], guidance_scale=1.0, negative_prompt="blurry"))
    with pytest.raises(SpecError) as caught:
        preflight.check_models(spec)
    assert str(caught.value) == (
        "stages.0.negative_prompt: sd ignores negative_prompt when guidance_scale <= 1 (it is 1); raise "
        "guidance_scale above 1 or leave negative_prompt out (the family detected from its StableDiffusionPipeline)"
    )
    named_wrong = parse_spec(spec_with(family_models["sdxl"], family="sd-turbo"))
    with pytest.raises(SpecError, match=r"^stages.0.family: .* is a StableDiffusionXLPipeline \(the sdxl family\), "
                                        r"not a sd-turbo model"):
        preflight.check_models(named_wrong)
    preflight.check_models(parse_spec(spec_with(family_models["sdxl"], family="sdxl-turbo")))


def test_a_row_whose_negative_prompt_its_family_would_ignore_fails_alone(family_models):
    import pyarrow as pa

    from pipeline import batch as B
    from pipeline.io.prepare import RowRules, canonical_batch
    from pipeline.stages import WORKERS

    table = pa.table({"prompt": ["a", "b"], "negative_prompt": ["blurry", None]})
    rules = RowRules(job_seed=3, base_dir="/", storage_options={}, id_column=None,
                     roles={"prompt": "prompt", "negative_prompt": "negative_prompt"}, overrides={})
    worker = WORKERS["txt2img"](stage("txt2img", family_models["sd-turbo"], family="sd-turbo"))
    out = worker(canonical_batch(table, rules))
    assert list(out[B.STATUS]) == ["failed", "ok"]
    assert out[B.ERROR][0] == ("stages.0 (txt2img): negative_prompt: sd-turbo ignores negative_prompt when "
                               "guidance_scale <= 1 (it is 0); raise guidance_scale above 1 or leave negative_prompt out")


CASCADES = ("wuerstchen", "stable-cascade")


@pytest.fixture(scope="session")
def cascades(tmp_path_factory) -> dict[str, str]:
    """Tiny Würstchen and Stable Cascade folders, as diffusers 0.42 saves them."""
    from pipeline.tiny_models import write_tiny_model

    root = tmp_path_factory.mktemp("cascades")
    return {family: str(write_tiny_model(root / family, "txt2img", family)) for family in CASCADES}


@pytest.fixture(scope="session")
def wuerstchen(cascades) -> str:
    return cascades["wuerstchen"]


@pytest.mark.parametrize("family", CASCADES)
def test_a_saved_wuerstchen_or_cascade_pipeline_loads_through_the_loader(cascades, family):
    # diffusers 0.42 moved Würstchen's classes (and the VQGAN Stable Cascade shares) to
    # pipelines/deprecated: the folder it saves names classes it cannot resolve, until the
    # loader registers them (models.register_moved_classes).
    from pipeline.models import load_pipeline, resolve_model
    from pipeline.tiny_models import build_tiny_pipeline

    pipe = load_pipeline("txt2img", resolve_model(cascades[family]), "float32", "cpu")
    assert type(pipe).__name__ == {"wuerstchen": "WuerstchenCombinedPipeline",
                                   "stable-cascade": "StableCascadeCombinedPipeline"}[family]
    built = build_tiny_pipeline("txt2img", family)
    built.set_progress_bar_config(disable=True)
    arguments = dict(prompt=["a"], height=32, width=32, prior_num_inference_steps=2, num_inference_steps=2,
                     output_type="pt")
    loaded = pipe(generator=[torch.Generator().manual_seed(5)], **arguments).images
    # The same weights (a loaded Stable Cascade differs in the last float bits from the one
    # built in memory; the pipeline's own output is compared exactly below).
    assert torch.allclose(loaded, built(generator=[torch.Generator().manual_seed(5)], **arguments).images, atol=1e-4)


@pytest.mark.parametrize("family", CASCADES)
def test_a_cascade_runs_through_the_pipeline_with_its_own_argument_names(ray_cluster, cascades, tmp_path, family):
    from pipeline.models import register_moved_classes

    table = write_table(tmp_path / "in.parquet", {"prompt": ["a red circle"], "negative_prompt": ["blurry"]})
    spec = job(table, str(tmp_path / "out"), [stage("txt2img", cascades[family], batch_size=1, guidance_scale=4.0)])
    run_job(parse_spec(spec))
    [row] = read_metadata(str(tmp_path / "out"))
    record = row["stages"][0]
    register_moved_classes()
    expected = direct("AutoPipelineForText2Image", cascades[family], record["seed"], prompt=["a red circle"],
                      negative_prompt=["blurry"], height=32, width=32, prior_num_inference_steps=2,
                      prior_guidance_scale=4.0)
    assert expected.shape == (40, 40, 3)  # rounded through the prior's 42.67x latent
    assert np.array_equal(pixels_of(row), expected)
    assert (record["family"], record["width"], record["height"]) == (family, 40, 40)
    assert json.loads(record["arguments"]) == {
        "prior_num_inference_steps": 2, "prior_guidance_scale": 4.0, "num_inference_steps": 12,
        "decoder_guidance_scale": 0.0, "width": 32, "height": 32,
    }


def test_wuerstchen_refuses_what_it_has_no_pipeline_or_argument_for(wuerstchen, tiny):
    assert "stages.0.kind: the wuerstchen family has no img2img pipeline; it serves txt2img" in error_of(
        job("in.parquet", "out", [{"kind": "img2img", "model": "m", "family": "wuerstchen"}]))
    lora = [{"path": "a.safetensors", "name": "a"}]
    assert "stages.0.loras: the wuerstchen family takes no loras here" in error_of(
        spec_with("m", family="wuerstchen", loras=lora))
    detected = parse_spec(job("in.parquet", "out", [{"kind": "img2img", "model": wuerstchen}]))
    with pytest.raises(SpecError, match=r"^stages.0.kind: the wuerstchen family has no img2img pipeline"):
        preflight.check_models(detected)


def test_kandinsky_runs_negative_prompts_in_a_batch_that_diffusers_alone_refuses(ray_cluster, family_models, tmp_path):
    import diffusers

    from pipeline.families import negative_generator

    model = family_models["kandinsky22"]
    prompts = ["a red circle", "a blue square"]
    arguments = dict(prompt=prompts, negative_prompt=["blurry"] * 2, num_inference_steps=2, guidance_scale=4.0,
                     width=32, height=32)
    # diffusers 0.42's prior runs the negative prompts as extra rows, each needing a generator:
    # with one per prompt, a batch of two fails.
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(IndexError):
        pipe(generator=[torch.Generator().manual_seed(i) for i in range(2)], prior_num_inference_steps=2, **arguments)

    table = write_table(tmp_path / "in.parquet", {"prompt": prompts, "negative_prompt": ["blurry"] * 2})
    run_job(parse_spec(job(table, str(tmp_path / "out"), [stage("txt2img", model, batch_size=2, guidance_scale=4.0)])))
    rows = {row["prompt"]: row for row in read_metadata(str(tmp_path / "out"))}
    seeds = [rows[prompt]["stages"][0]["seed"] for prompt in prompts]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    pipe = diffusers.AutoPipelineForText2Image.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stage actors run here
    try:
        images = pipe(generator=generators + [negative_generator(g) for g in generators], prior_num_inference_steps=25,
                      prior_guidance_scale=4.0, output_type="np", **arguments).images
    finally:
        torch.set_num_threads(before)
    for prompt, image in zip(prompts, images):  # pt output denormalised as diffusers' np output is
        assert np.array_equal(pixels_of(rows[prompt]), (image * 255).round().astype("uint8")), prompt
        assert rows[prompt]["stages"][0]["family"] == "kandinsky22"
    assert json.loads(rows[prompts[0]]["stages"][0]["arguments"])["prior_num_inference_steps"] == 25


@pytest.mark.parametrize("style", ["sdxl", "kandinsky22"])
def test_a_row_without_a_negative_prompt_is_the_same_whatever_its_batch_mate_asks(family_models, style):
    """SDXL (zeros) and Kandinsky (a zero embedding) treat "no negative prompt" otherwise than
    an encoded "": a row without one must not turn into one with "" because a batch mate
    has a negative prompt."""
    import pyarrow as pa

    from pipeline import batch as B
    from pipeline.io.prepare import RowRules, canonical_batch
    from pipeline.stages import WORKERS

    rules = RowRules(job_seed=3, base_dir="/", storage_options={}, id_column=None,
                     roles={"prompt": "prompt", "negative_prompt": "negative_prompt"}, overrides={})
    worker = WORKERS["txt2img"](stage("txt2img", family_models[style], batch_size=2, guidance_scale=4.0))

    def first_image(prompts, negatives):
        out = worker(canonical_batch(pa.table({"prompt": prompts, "negative_prompt": negatives}), rules))
        assert set(out[B.STATUS]) == {"ok"}, out[B.ERROR]
        return out[B.IMAGE][0]

    # Alone, and beside a row with a negative prompt: the same call (batch mates change
    # the rounding of batched kernels, so a mate without one is not the comparison).
    alone = first_image(["a red circle"], [None])
    assert first_image(["a red circle", "a blue square"], [None, "blurry"]) == alone


def test_the_readme_family_table_matches_the_declarations():
    from pathlib import Path

    from pipeline.families import FAMILIES

    text = (Path(__file__).parents[1] / "README.md").read_text()
    table = text[text.index("| family | kinds |"):].split("\n\n")[0].splitlines()[2:]
    listed = {}
    for line in table:
        names_cell, kinds_cell = line.split(" | ")[:2]
        kinds = tuple(kind.strip() for kind in kinds_cell.split(","))
        for name in names_cell.split("(")[0].split("`")[1::2]:
            listed[name] = kinds
    assert listed == {name: family.kinds for name, family in FAMILIES.items()}


def test_hub_checkpoints_resolve_to_their_family():
    from pipeline.families import resolve_family

    # the decoder repo AutoPipeline turns into the combined pipeline
    assert resolve_family(None, "KandinskyV22Pipeline", "kandinsky-community/kandinsky-2-2-decoder").name == "kandinsky22"
    assert resolve_family(None, "StableDiffusionXLPipeline", "stabilityai/sdxl-turbo").name == "sdxl"
    assert resolve_family("sdxl-turbo", "StableDiffusionXLPipeline", "stabilityai/sdxl-turbo").name == "sdxl-turbo"


def test_the_pixel_budget_counts_a_cascades_default_size(cascades):
    """Given no width or height, Würstchen makes its call's default (512 px, rounded through
    its prior to 544): the budget must count that, not 0."""
    import pyarrow as pa

    from pipeline import batch as B
    from pipeline.io.prepare import RowRules, canonical_batch
    from pipeline.stages import WORKERS

    rules = RowRules(job_seed=3, base_dir="/", storage_options={}, id_column=None, roles={"prompt": "prompt"},
                     overrides={})
    worker = WORKERS["txt2img"](stage("txt2img", cascades["wuerstchen"], width=None, height=None),
                                max_output_pixels=256 * 256)
    out = worker(canonical_batch(pa.table({"prompt": ["a red circle"]}), rules))
    assert out[B.STATUS][0] == "failed" and "pixels" in out[B.ERROR][0], out[B.ERROR]
