"""The Serve endpoint's configuration and pieces that need no running Ray: configs, keys, the
deployment files under serve/, and a `synth serve` that imports no torch."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.spec import SpecError
from serve.auth import ApiKeys
from serve.config import DEFAULT, load_config, parse_config
from test_k8s import check as check_against_kuberay_crd

SERVE = Path(__file__).parents[1] / "serve"


def test_the_default_serves_the_shapes_model_with_its_trained_recipe():
    from pipeline.demo import demo_spec

    config = load_config()
    assert (config.host, config.port) == ("127.0.0.1", 8000)
    (model,) = config.models
    assert model.name == "synth:shapes" and model.kinds() == ["txt2img", "img2img", "inpaint"]
    recipe = demo_spec(Path("/tmp")).stages[0]
    for stage in model.stages:
        assert (stage.model, stage.steps, stage.guidance_scale) == (recipe.model, recipe.steps, recipe.guidance_scale)
    assert (model.stage("txt2img").width, model.stage("txt2img").height) == (32, 32)
    # The example that writes every field out is the same config.
    assert load_config(SERVE / "examples" / "shapes.yaml") == config


def test_the_deployment_files_are_valid():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((SERVE / "serve_config.yaml").read_text()))
    service, config_map = yaml.safe_load_all((SERVE / "rayservice.yaml").read_text())
    assert service["kind"] == "RayService"
    check_against_kuberay_crd(service)  # as `kubectl apply` checks it, unknown fields included
    ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    parse_config(yaml.safe_load(config_map["data"]["serve.yaml"]))
    load_config(SERVE / "examples" / "sd15.yaml")


@pytest.mark.parametrize("change, message", [
    (lambda c: c["models"][0]["stages"][0].update(replicas={"min": 2}),
     "models.0.stages.0.replicas: set the replica's resources on the model"),
    (lambda c: c["models"][0]["stages"].append(dict(c["models"][0]["stages"][0])),
     "models.0.stages.3.kind: txt2img appears twice"),
    (lambda c: c["models"][0]["stages"][0].update(width=33), "models.0.stages.0.width: must be a multiple of 8"),
    (lambda c: c["models"][0].update(max_batch_size=64), "models.0.max_ongoing_requests: 16 is below max_batch_size"),
    (lambda c: c["models"].append(dict(c["models"][0])), "models.1.name: 'synth:shapes' appears twice"),
    (lambda c: c.update(url_storage={"path": "s3://b/p", "storage_options": {"secret": "x"}}),
     "url_storage.storage_options.secret: looks like a credential"),
])
def test_a_bad_config_names_the_field(change, message):
    import copy

    raw = copy.deepcopy(DEFAULT)
    change(raw)
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(raw)


def test_api_keys_from_the_environment_and_a_file(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nsk-file-1\n\n")
    keys = ApiKeys.load(str(keys_file), environ={"SYNTH_API_KEYS": "sk-env-1, sk-env-2"})
    assert keys.enabled
    for good in ("sk-file-1", "sk-env-1", "sk-env-2"):
        assert keys.allows(f"Bearer {good}") and keys.allows(f"bearer {good}")
    for bad in (None, "", "sk-file-1", "Bearer", "Bearer sk-file", "Basic sk-env-1", "Bearer sk-env-1x"):
        assert not keys.allows(bad)
    assert "sk-env-1" not in repr(vars(keys))  # only digests are kept
    assert ApiKeys.load(None, environ={}).allows(None)  # no keys: open


def test_synth_serve_imports_no_torch():
    code = "import sys, pipeline.cli, serve.app, serve.run; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SERVE.parent)
    assert result.stdout.split() == ["False", "False"], result.stderr[-2000:]


def test_url_storage_on_s3_answers_a_presigned_url(s3):
    import urllib.request

    from serve.config import UrlStorage
    from serve.storage import UrlStore

    bucket, options, fs = s3
    store = UrlStore(UrlStorage(path=f"{bucket}/served", storage_options=options, expires_s=60))
    data = b"\x89PNG\r\n\x1a\n not really"
    url = store.put(data, "png", request=None)
    assert url.startswith(options["client_kwargs"]["endpoint_url"]) and "Signature" in url
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == data
    (key,) = fs.ls(f"{bucket}/served/images")
    assert key.rsplit("/", 1)[1] in url


def test_local_url_storage_serves_only_its_own_names(tmp_path):
    from serve.config import UrlStorage
    from serve.errors import APIError
    from serve.storage import UrlStore

    store = UrlStore(UrlStorage(path=str(tmp_path / "served"), public_url="http://example.test:8000/"))
    url = store.put(b"png bytes", "png", request=None)
    name = url.rsplit("/", 1)[1]
    assert url == f"http://example.test:8000/v1/files/{name}"
    assert store.response(name).body == b"png bytes"
    (tmp_path / "secret.png").write_bytes(b"x")
    for bad in ("../secret.png", "..%2Fsecret.png", name.replace(".png", ".jpeg"), "0" * 32 + ".png"):
        with pytest.raises(APIError):
            store.response(bad)


def test_a_request_that_makes_the_pipeline_raise_fails_alone():
    """A batch whose worker raises runs again request by request: only the request that
    raises gets an error, its batch mates their images."""
    import numpy as np

    from pipeline import batch as B
    from serve.api import Work
    from serve.deployment import ModelServer

    class Worker:
        def __call__(self, batch):
            if any("boom" in prompt for prompt in batch[B.PROMPT]):
                raise RuntimeError("a kernel failed")
            out = dict(batch)
            count = len(batch[B.ID])
            out[B.IMAGE] = B.object_column([np.zeros((8, 8, 3), np.uint8).tobytes()] * count)
            out[B.WIDTH], out[B.HEIGHT] = np.full(count, 8), np.full(count, 8)
            return out

    class Metrics:
        def batch(self, *args):
            pass

        def images(self, *args):
            pass

    server = object.__new__(ModelServer)
    server.name, server.max_pixels, server.workers, server.metrics = "m", 4096, {"txt2img": Worker()}, Metrics()
    works = [Work("txt2img", [{"id": "0", "prompt": prompt, "seed": 1}], "png", 90) for prompt in ("ok", "boom", "fine")]
    good, bad, also_good = server._run(works)
    assert good.images[0].startswith(b"\x89PNG") and also_good.images[0].startswith(b"\x89PNG")
    assert not good.errors and bad.errors == ["txt2img: the pipeline failed: RuntimeError"] and bad.images == [None]
