import json
import subprocess
import sys

import pytest

from pipeline.spec import SpecError, load_spec, parse_spec


def valid() -> dict:
    return {
        "name": "j",
        "input": {"path": "prompts.parquet"},
        "stages": [{"kind": "txt2img", "model": "m"}, {"kind": "upscale", "model": "u"}],
        "output": {"path": "out"},
    }


def error_of(raw: dict) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return str(caught.value)


def test_defaults_are_filled_per_kind():
    spec = parse_spec(valid())
    assert (spec.stages[0].steps, spec.stages[0].guidance_scale) == (30, 7.5)
    assert (spec.stages[1].steps, spec.stages[1].noise_level) == (20, 20)
    assert getattr(spec.stages[0], "strength", None) is None  # txt2img takes none


@pytest.mark.parametrize(
    "patch, path",
    [
        (lambda s: s["stages"][0].update(width=33), "stages.0.width"),
        (lambda s: s["stages"][0].update(stpes=3), "stages.0.stpes"),
        (lambda s: s["stages"][0].update(kind="sketch"), "stages.0.kind"),
        (lambda s: s["stages"][0].update(strength=0.5), "stages.0.strength"),
        (lambda s: s["stages"][1].update(width=64), "stages.1.width"),
        (lambda s: s["stages"][1].update(kind="txt2img"), "stages.1.kind"),
        (lambda s: s["stages"][0].update(replicas={"min": 3, "max": 2}), "stages.0.replicas"),
        (lambda s: s["output"].update(format="gif"), "output.format"),
        (lambda s: s.update(storage_options={"key": "AKIA..."}), "storage_options.key"),
        (
            lambda s: s["input"].update(storage_options={"client_kwargs": {"aws_secret_access_key": "x"}}),
            "input.storage_options.client_kwargs.aws_secret_access_key",
        ),
        (
            lambda s: s.update(storage_options={"s3_additional_kwargs": {"SSECustomerKey": "x"}}),
            "storage_options.s3_additional_kwargs.SSECustomerKey",
        ),
        (lambda s: s.pop("stages"), "stages"),
    ],
)
def test_bad_spec_names_the_field(patch, path):
    raw = valid()
    patch(raw)
    message = error_of(raw)
    assert f"\n{path}:" in message, message


def test_yaml_file_with_overrides(tmp_path):
    import yaml

    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump(valid()))
    spec = load_spec(file, ["stages.0.steps=2", "stages.1.replicas.max=3", "output.format=jpeg"])
    assert spec.stages[0].steps == 2 and isinstance(spec.stages[0].steps, int)
    assert spec.stages[1].replicas.max == 3
    assert spec.output.format == "jpeg"
    with pytest.raises(SpecError, match="no item '5'"):
        load_spec(file, ["stages.5.steps=2"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("stages.0.negative_prompt=*blurry*", "--set stages.0.negative_prompt: '*blurry*' is not a valid YAML value"),
        ("stages.0.negative_prompt=blurry, low #2", "YAML reads '#2' in 'blurry, low #2' as a comment"),
        ("stages.0.negative_prompt=C# #2", "YAML reads '#2' in 'C# #2' as a comment"),
        ("stages.0.steps=5 # five", "YAML reads '# five' in '5 # five' as a comment"),
        ("stages.--1.steps=2", "--set stages.--1: no item '--1'"),
    ],
)
def test_set_values_yaml_would_misread_are_refused_with_the_path(tmp_path, override, message):
    import yaml

    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump(valid()))
    with pytest.raises(SpecError) as caught:
        load_spec(file, [override])
    assert message in str(caught.value)
    quoted = load_spec(file, ["stages.0.negative_prompt='blurry, low #2'", "stages.-1.steps=3", "output.path=out#1"])
    assert (quoted.stages[0].negative_prompt, quoted.stages[1].steps, quoted.output.path) == ("blurry, low #2", 3, "out#1")


def test_a_key_given_twice_is_refused(tmp_path):
    file = tmp_path / "job.yaml"
    file.write_text("name: j\ninput: {path: p.parquet}\nstages:\n  - {kind: txt2img, model: m, steps: 3, steps: 4}\n"
                    "output: {path: out}\n")
    with pytest.raises(SpecError, match="the key 'steps' appears twice in one mapping"):
        load_spec(file)
    # A merge key is not a duplicate, and a key may override a merged one.
    file.write_text("name: j\ninput: {path: p.parquet}\nbase: &base {kind: txt2img, model: m, steps: 3}\n"
                    "stages:\n  - {<<: *base, steps: 4}\noutput: {path: out}\n")
    with pytest.raises(SpecError, match="base: Extra inputs are not permitted"):
        load_spec(file)  # merged fine; the top-level anchor holder is what the spec refuses


def test_json_spec_loads_too(tmp_path):
    file = tmp_path / "job.json"
    file.write_text(json.dumps(valid()))
    assert load_spec(file).name == "j"


def test_storage_options_merge_input_over_top_level():
    raw = valid()
    raw["storage_options"] = {"anon": False, "client_kwargs": {"endpoint_url": "http://a"}}
    raw["output"]["storage_options"] = {"anon": True}
    spec = parse_spec(raw)
    assert spec.output_storage_options() == {"anon": True, "client_kwargs": {"endpoint_url": "http://a"}}
    assert spec.input_storage_options() == {"anon": False, "client_kwargs": {"endpoint_url": "http://a"}}


def test_cli_validate_exits_nonzero_and_names_the_field(tmp_path):
    import yaml

    raw = valid()
    raw["stages"][0]["guidance_scale"] = -1
    file = tmp_path / "job.yaml"
    file.write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", str(file)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "stages.0.guidance_scale" in result.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "pipeline", "validate", str(file), "--set", "stages.0.guidance_scale=3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["stages"][0]["guidance_scale"] == 3


def test_a_yaml_alias_bomb_is_refused_without_expanding_it(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10**10 values
    lines += ["name: j", "input: {path: x}", "stages: [{kind: txt2img, model: m}]", "output: {path: o}",
              "storage_options: {config_kwargs: {x: *a9}}"]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines))
    with pytest.raises(SpecError, match="its YAML aliases expand to more than 100000 values"):
        load_spec(tmp_path / "bomb.yaml")
