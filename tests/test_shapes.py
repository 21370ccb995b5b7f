"""The shapes model's parts: the dataset, the judge, the tokenizer, training, loading."""

import json

import numpy as np
import pytest

from pipeline.shapes import dataset, judge, tokenizer


def test_the_judge_reads_every_rendered_scene_right():
    # The semantic checks are only as good as this reader: it must get the ground truth.
    scenes = dataset.random_scenes(np.random.default_rng(7), 2000, include_held_out=True)
    wrong = [
        (scene, reading)
        for scene, reading in zip(scenes, map(judge.read_image, dataset.render(scenes)))
        if not reading.matches(scene.colour, scene.shape, scene.background)
    ]
    assert not wrong, wrong[:3]


def test_the_judge_finds_no_shape_in_noise_or_a_blank_image():
    blank = np.full((32, 32, 3), 255, np.uint8)
    assert judge.read_image(blank).shape == "none"
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not any(judge.read_image(noise).matches(c, s, b) for c, s, b in dataset.all_combinations())


def test_training_data_never_shows_a_held_out_pair():
    scenes = dataset.random_scenes(np.random.default_rng(0), 5000)
    assert not any(scene.held_out for scene in scenes)
    assert {s.colour for s in scenes} == set(dataset.COLOURS) and {s.shape for s in scenes} == set(dataset.SHAPES)
    assert dataset.Scene("orange", "triangle", "white").caption == "an orange triangle on a white background"


def test_every_caption_word_is_one_token_and_other_text_still_tokenizes(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tokenizer.write_word_tokenizer(tmp_path, dataset.vocabulary()))
    assert tok.model_max_length == tokenizer.MAX_TOKENS
    for word in dataset.vocabulary():
        assert tok.tokenize(word) == [word + "</w>"]
    caption = dataset.Scene("purple", "square", "black").caption
    assert len(tok(caption).input_ids) == len(caption.split()) + 2
    assert tok.tokenize("a pink blob") == ["a</w>", "p", "i", "n", "k</w>", "bl", "o", "b</w>"]


def _tiny_training(out, seed=0):
    from pipeline.shapes.train import TrainConfig, train

    import torch

    config = TrainConfig(seed=seed, batch_size=4, vae_steps=3, unet_steps=3, warmup_steps=1, log_every=1, threads=1)
    lines, threads = [], torch.get_num_threads()
    train(out, config, log=lines.append)
    assert torch.get_num_threads() == threads  # the caller's setting is back
    return lines


def _weights(folder):
    from safetensors.numpy import load_file

    return {f"{path.parent.name}/{key}": value for path in sorted(folder.rglob("*.safetensors")) for key, value in load_file(path).items()}


@pytest.mark.timeout(300)
def test_training_is_deterministic_logs_its_losses_and_loads_for_three_stage_kinds(tmp_path):
    from pipeline.models import ResolvedModel, load_pipeline

    lines = _tiny_training(tmp_path / "a")
    _tiny_training(tmp_path / "b")
    first, second = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)
    assert any(line.startswith("unet step 3/3  loss") for line in lines)
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert len(record["vae_losses"]) == 3 and len(record["unet_losses"]) == 3
    scheduler = json.loads((tmp_path / "a" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DPMSolverMultistepScheduler" and scheduler["steps_offset"] == 1
    # Another seed, other weights.
    _tiny_training(tmp_path / "c", seed=1)
    assert not np.array_equal(first["unet/conv_in.weight"], _weights(tmp_path / "c")["unet/conv_in.weight"])
    resolved = ResolvedModel(str(tmp_path / "a"), str(tmp_path / "a"), "test")
    for kind, expected in [
        ("txt2img", "StableDiffusionPipeline"),
        ("img2img", "StableDiffusionImg2ImgPipeline"),
        ("inpaint", "StableDiffusionInpaintPipeline"),
    ]:
        assert type(load_pipeline(kind, resolved, "float32", "cpu")).__name__ == expected


def test_the_builtin_model_is_committed_and_resolves_by_name():
    from pipeline.models import BUILTIN_MODELS, ModelError, check_model_source, model_source, resolve_model

    assert model_source("synth:shapes") == "builtin"
    check_model_source("synth:shapes")
    resolved = resolve_model("synth:shapes")
    assert resolved.path == str(BUILTIN_MODELS["synth:shapes"]) and resolved.revision.startswith("files:")
    record = json.loads((BUILTIN_MODELS["synth:shapes"] / "training.json").read_text())
    assert record["config"]["unet_steps"] >= 1000
    with pytest.raises(ModelError, match="unknown built-in model 'synth:nope'"):
        check_model_source("synth:nope")
