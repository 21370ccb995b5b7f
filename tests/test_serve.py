"""The Serve endpoint over real HTTP on 127.0.0.1: the built-in shapes model (txt2img, img2img,
inpaint) and a tiny random upscaler, one application for the module, on the session's Ray."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import _free_port, half_mask, job, png_bytes, read_metadata, write_table

pytestmark = pytest.mark.timeout(600)

KEY = "sk-test-7f3a9c"
PROMPT = "a red circle on a white background"
SHAPES = {"model": "synth:shapes", "steps": 2, "guidance_scale": 4.0}
MAX_PIXELS = 256 * 256


def serve_config(port: int, tiny: dict, tmp) -> dict:
    keys = tmp / "keys.txt"
    keys.write_text(f"# test keys\n{KEY}\n")
    return {
        "host": "127.0.0.1",
        "port": port,
        "models": [
            {"name": "synth:shapes",
             "stages": [{"kind": "txt2img", **SHAPES, "width": 32, "height": 32, "batch_size": 16},
                        {"kind": "img2img", **SHAPES, "strength": 0.5}, {"kind": "inpaint", **SHAPES}],
             "cpus": 0.25, "max_batch_size": 16, "batch_wait_timeout_s": 0.3,
             "max_ongoing_requests": 16, "max_queued_requests": 8},
            # One of the session Ray's 2 fake GPUs: Ray pins the replica to it (the work runs on the CPU).
            {"name": "tiny-upscale", "stages": [{"kind": "upscale", "model": tiny["upscale"], "steps": 2}],
             "cpus": 0.25, "gpus": 1, "max_batch_size": 2, "max_ongoing_requests": 2},
        ],
        # 28 requests in the ingress at once (16 in the model's replica, 8 queued for it, the
        # rest refused there), 16 more waiting at Serve's proxy, the rest refused there.
        "ingress": {"cpus": 0.25, "max_ongoing_requests": 28, "max_queued_requests": 16},
        "limits": {"max_pixels": MAX_PIXELS, "max_n": 4, "max_prompt_chars": 200, "max_request_bytes": 512 * 1024},
        "api_keys_file": str(keys),
        "url_storage": {"path": str(tmp / "urls")},
        "retry_after_s": 3,
    }


@pytest.fixture(scope="module")
def batch_image(ray_cluster, tmp_path_factory):
    """The batch pipeline's image for one seeded prompt (run before Serve holds any CPU)."""
    from pipeline.runner import run_job
    from pipeline.spec import parse_spec

    tmp = tmp_path_factory.mktemp("serve-job")
    table = write_table(tmp / "t.parquet", {"id": ["a"], "prompt": [PROMPT], "seed": [42]})
    stage = {"kind": "txt2img", **SHAPES, "width": 32, "height": 32}
    summary = run_job(parse_spec(job(table, str(tmp / "out"), [stage], input={"path": table, "id_column": "id"})))
    assert summary.rows_ok == 1
    return read_metadata(str(tmp / "out"))[0]["sha256"]


@pytest.fixture(scope="module")
def endpoint(ray_cluster, batch_image, tiny, tmp_path_factory):
    from ray import serve

    from serve.app import build_app
    from serve.config import parse_config

    port = _free_port()
    config = parse_config(serve_config(port, tiny, tmp_path_factory.mktemp("serve")))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="synth", route_prefix="/", blocking=False)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if call(base, "GET", "/healthz")[0] == 200:
                break
        except OSError:
            pass
        time.sleep(0.5)
    # One request first: the proxy's and the ingress's routers learn their replicas on the
    # first call, and until then every request counts as queued (max_queued_requests).
    assert call(base, "POST", "/v1/images/generations", {"prompt": PROMPT})[0] == 200
    yield base
    serve.shutdown()


def call(base: str, method: str, path: str, body=None, key: str | None = KEY, headers: dict | None = None,
         timeout: float = 120):
    """(status, headers, parsed JSON or bytes)."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(base + path, data=data, method=method)
    if isinstance(body, dict):
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, error.headers, error.read()
    kind = head.get("content-type", "")
    return status, head, json.loads(raw) if kind.startswith("application/json") else raw


def multipart(fields: dict[str, str], files: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "synthtestboundary7d1e"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.png"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def upload(base: str, path: str, fields: dict, files: dict, key: str | None = KEY):
    body, kind = multipart({name: str(value) for name, value in fields.items()}, files)
    return call(base, "POST", path, body, key=key, headers={"Content-Type": kind})


def image_of(item: dict):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))


def assert_error(result, status: int, param: str | None, text: str = ""):
    code, _, body = result
    assert code == status, (code, body)
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["param"] == param and text in error["message"], error


# ---------------------------------------------------------------- generation


def test_a_seeded_request_gives_the_batch_pipelines_bytes(endpoint, batch_image):
    status, head, body = call(endpoint, "POST", "/v1/images/generations",
                              {"prompt": PROMPT, "seed": 42, "size": "32x32", "steps": 2})
    assert status == 200, body
    image = base64.b64decode(body["data"][0]["b64_json"])
    assert hashlib.sha256(image).hexdigest() == batch_image
    assert body["data"][0]["seed"] == 42 and head["x-synth-seed"] == "42" and body["size"] == "32x32"


def test_without_a_seed_each_image_gets_one_that_reproduces_it(endpoint):
    import numpy as np

    status, head, body = call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "n": 2})
    assert status == 200, body
    seeds = [item["seed"] for item in body["data"]]
    assert head["x-synth-seed"] == ",".join(map(str, seeds)) and len(set(seeds)) == 2
    again = call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": seeds[1]})[2]
    # The same image: made alone rather than beside another, a few of its pixels may round
    # apart on the CPU (by 1 level at most in the README's measurement; 2 allowed here).
    first, second = (np.asarray(image_of(item), np.int16) for item in (body["data"][1], again["data"][0]))
    assert np.abs(first - second).max() <= 2 and (first != second).mean() < 0.1
    webp = call(endpoint, "POST", "/v1/images/generations",
                {"prompt": PROMPT, "output_format": "webp", "output_compression": 80})[2]
    assert webp["output_format"] == "webp" and image_of(webp["data"][0]).format == "WEBP"


def rgba_mask(size=(32, 32)) -> bytes:
    """An OpenAI mask: fully transparent (edit here) on the right half, opaque elsewhere."""
    from PIL import Image

    mask = Image.new("RGBA", size, (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (size[0] // 2, 0, size[0], size[1]))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def test_edits_inpaint_with_a_mask_and_run_img2img_without(endpoint):
    red = png_bytes((200, 30, 30))
    for mask in (rgba_mask(), half_mask()):  # OpenAI's transparent area, or white on black
        status, head, body = upload(endpoint, "/v1/images/edits", {"prompt": "a blue square on a white background",
                                                                    "seed": 3}, {"image": red, "mask": mask})
        assert status == 200 and head["x-synth-stage"] == "inpaint", body
        assert image_of(body["data"][0]).size == (32, 32)
    status, head, body = upload(endpoint, "/v1/images/edits", {"prompt": "a blue square on a white background",
                                                                "strength": 0.9, "n": 2}, {"image": red})
    assert status == 200 and head["x-synth-stage"] == "img2img" and len(body["data"]) == 2, body


def test_variations_and_upscale(endpoint):
    status, head, body = upload(endpoint, "/v1/images/variations", {"n": 2, "seed": 1}, {"image": png_bytes()})
    assert status == 200 and head["x-synth-stage"] == "img2img" and len(body["data"]) == 2, body
    status, head, body = upload(endpoint, "/v1/images/upscale", {"seed": 1}, {"image": png_bytes(size=(16, 16))})
    assert status == 200 and head["x-synth-stage"] == "upscale", body
    assert image_of(body["data"][0]).size == (64, 64) and body["model"] == "tiny-upscale"


def test_a_replica_holds_the_gpus_its_model_asks_for(endpoint, ray_cluster):
    assert ray_cluster.available_resources().get("GPU", 0) == 1  # of 2: the upscaler's replica holds one


def test_each_model_is_a_deployment_with_its_configured_serving_options(endpoint):
    from ray.serve.context import _get_global_client

    details = _get_global_client().get_serve_details()["applications"]["synth"]["deployments"]
    assert set(details) == {"ingress", "model-synth-shapes", "model-tiny-upscale"}
    shapes = details["model-synth-shapes"]["deployment_config"]
    assert (shapes["max_ongoing_requests"], shapes["max_queued_requests"]) == (16, 8)
    assert shapes["autoscaling_config"]["min_replicas"] == shapes["autoscaling_config"]["max_replicas"] == 1
    assert shapes["ray_actor_options"]["num_cpus"] == 0.25
    assert shapes["backpressure_config"] == {"status_code": 503, "retry_after_s": 3.0}
    upscaler = details["model-tiny-upscale"]["deployment_config"]
    assert upscaler["ray_actor_options"]["num_gpus"] == 1 and upscaler["max_ongoing_requests"] == 2
    ingress = details["ingress"]["deployment_config"]
    assert (ingress["max_ongoing_requests"], ingress["max_queued_requests"]) == (28, 16)


def test_the_openai_client_works_unchanged(endpoint):
    from openai import OpenAI

    client = OpenAI(base_url=f"{endpoint}/v1", api_key=KEY, max_retries=0, timeout=120)
    made = client.images.generate(model="synth:shapes", prompt=PROMPT, size="32x32", response_format="b64_json",
                                  extra_body={"seed": 42, "steps": 2})
    assert made.data[0].b64_json and made.data[0].model_extra["seed"] == 42
    edited = client.images.edit(image=("red.png", png_bytes((200, 30, 30)), "image/png"), prompt=PROMPT,
                                mask=("mask.png", rgba_mask(), "image/png"), response_format="b64_json")
    assert image_of({"b64_json": edited.data[0].b64_json}).size == (32, 32)
    varied = client.images.create_variation(image=("red.png", png_bytes(), "image/png"), n=1, response_format="url")
    with urllib.request.urlopen(varied.data[0].url, timeout=30) as response:
        assert response.read().startswith(b"\x89PNG")
    assert [model.id for model in client.models.list()] == ["synth:shapes", "tiny-upscale"]


def test_concurrent_requests_are_batched(endpoint):
    refused = []

    def one(seed):
        # As OpenAI clients do, a 503 is retried after its Retry-After: a router that has not
        # yet heard its replicas' queue lengths may refuse one of a burst (seen once in CI).
        for _ in range(3):
            status, head, body = call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": seed})
            if status != 503:
                return status, head, body
            refused.append(seed)
            time.sleep(min(1.0, float(head.get("retry-after") or 1)))
        return status, head, body

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    assert [status for status, _, _ in results] == [200] * 16, [(s, h.get("retry-after"), b if s != 200 else "") for s, h, b in results]
    assert len(refused) <= 2, refused  # 16 requests are within the limits: backpressure is the exception
    assert max(int(head["x-synth-batch-size"]) for _, head, _ in results) > 1


def test_the_playground_draws_an_image_in_a_real_browser(endpoint, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{endpoint}/")
    assert browser.title == "synth playground"
    for field, value in (("key", KEY), ("steps", "2"), ("seed", "42")):
        browser.find_element(By.ID, field).send_keys(value)
    browser.find_element(By.ID, "generate").click()
    drawn = "const image = document.getElementById('image'); return image.complete && image.naturalWidth"
    WebDriverWait(browser, 120).until(lambda driver: driver.execute_script(drawn))
    assert browser.execute_script(drawn) == 32
    assert "seed 42" in browser.find_element(By.ID, "status").text
    # The model list came through the key (asked first without one: a 401), no script
    # failed, and nothing was blocked by the page's CSP.
    assert "synth:shapes" in browser.find_element(By.ID, "model").text
    severe = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert all("/v1/models" in message and "401" in message for message in severe), severe


def test_synth_metrics_are_exported_with_rays(endpoint, ray_cluster):
    """Images generated and batch sizes reach the node's Prometheus endpoint, beside Serve's own."""
    port = ray_cluster._private.worker._global_node.metrics_export_port
    # Each metric reaches the agent on its own export cycle: wait for all of them.
    names = ("ray_synth_images_generated", "ray_synth_batch_requests_bucket", "ray_synth_batch_images_bucket",
             "ray_serve_num_http_requests")
    deadline, text = time.time() + 90, ""
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        if all(name in text for name in names):
            break
        time.sleep(2)
    generated = [line for line in text.splitlines() if line.startswith("ray_synth_images_generated")]
    assert any('kind="txt2img"' in line and 'model="synth:shapes"' in line for line in generated), generated
    assert "ray_synth_batch_images_bucket" in text and "ray_serve_num_http_requests" in text


def test_the_load_benchmark_reports_its_figures(endpoint):
    from benchmarks.serve_bench import load

    figures = load(endpoint, concurrency=2, requests=4, key=KEY)
    assert figures["ok"] == 4 and figures["images_per_s"] > 0
    assert 0 < figures["p50_s"] <= figures["p99_s"] and figures["mean_batch_size"] >= 1


# ---------------------------------------------------------------- errors


GENERATION_ERRORS = [
    ({"prompt": PROMPT, "size": "36x32"}, "size", "multiple of 8"),
    ({"prompt": PROMPT, "size": "512x512"}, "size", "over the limit"),
    ({"prompt": PROMPT, "size": "big"}, "size", "WIDTHxHEIGHT"),
    ({"prompt": PROMPT, "n": 0}, "n", "between 1 and 4"),
    ({"prompt": PROMPT, "n": 5}, "n", "between 1 and 4"),
    ({"prompt": "x" * 201}, "prompt", "over the limit of 200"),
    ({"prompt": " "}, "prompt", "empty"),
    ({"prompt": PROMPT, "steps": 0}, "steps", "greater than or equal to 1"),
    ({"prompt": PROMPT, "guidance_scale": -1}, "guidance_scale", "greater than or equal to 0"),
    ({"prompt": PROMPT, "seed": -1}, "seed", ""),
    ({"prompt": PROMPT, "stpes": 2}, "stpes", "Extra inputs"),
    ({"prompt": PROMPT, "response_format": "xml"}, "response_format", ""),
    ({"n": 1}, "prompt", "Field required"),
]


def test_bad_generation_requests_get_an_openai_error_naming_the_field(endpoint):
    for body, param, text in GENERATION_ERRORS:
        assert_error(call(endpoint, "POST", "/v1/images/generations", body), 400, param, text)
    assert_error(call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "model": "nope"}), 404, "model")
    assert_error(call(endpoint, "POST", "/v1/images/generations", b"{not json",
                      headers={"Content-Type": "application/json"}), 400, None, "could not parse the JSON")
    assert_error(call(endpoint, "POST", "/v1/images/generations", b"x" * (600 * 1024),
                      headers={"Content-Type": "application/json"}), 413, None, "over the limit")
    assert_error(call(endpoint, "GET", "/v1/nothing"), 404, None)


def test_bad_uploads_get_an_openai_error_naming_the_field(endpoint):
    from PIL import Image

    big = io.BytesIO()
    Image.new("L", (300, 300)).save(big, format="PNG")  # 90,000 pixels, over the 65,536 budget
    truncated = png_bytes(size=(32, 32), colour=(1, 2, 3))
    noisy = io.BytesIO()
    Image.effect_noise((32, 32), 64).convert("RGB").save(noisy, format="PNG")
    edit = {"prompt": PROMPT}
    cases = [
        ("/v1/images/edits", edit, {"image": b"hello, not an image"}, "image", "not a known image format"),
        ("/v1/images/edits", edit, {"image": big.getvalue()}, "image", "over the limit"),
        ("/v1/images/edits", edit, {"image": png_bytes(), "mask": half_mask((16, 16))}, "mask", "differs"),
        ("/v1/images/edits", {}, {"image": png_bytes()}, "prompt", "Field required"),
        ("/v1/images/edits", edit, {}, "image", "required"),
        ("/v1/images/edits", {**edit, "strength": 0}, {"image": png_bytes()}, "strength", "greater than 0"),
        ("/v1/images/edits", edit, {"image": noisy.getvalue()[:200]}, "image", "cannot decode"),
        ("/v1/images/upscale", {}, {"image": png_bytes(size=(72, 72))}, "image", "over the limit"),
        ("/v1/images/upscale", {"size": "64x64"}, {"image": png_bytes()}, "size", "4x its input"),
    ]
    del truncated
    for path, fields, files, param, text in cases:
        assert_error(upload(endpoint, path, fields, files), 400, param, text)
    garbled = call(endpoint, "POST", "/v1/images/edits", b"--nope\r\n\r\n",
                   headers={"Content-Type": "multipart/form-data; boundary=other"})
    assert garbled[0] == 400 and garbled[2]["error"]["param"] in (None, "image"), garbled
    assert_error(call(endpoint, "POST", "/v1/images/edits", {"prompt": PROMPT}), 400, None, "multipart/form-data")
    # Nothing sent above harmed a replica.
    assert call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": 1})[0] == 200


def test_api_keys(endpoint, ray_cluster):
    from pathlib import Path

    for key in (None, "sk-wrong"):
        status, head, body = call(endpoint, "GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key" and head["www-authenticate"] == "Bearer"
    # Refused before the body is read: a body that would be a 400 or a 413 is a 401 first.
    for body in (b"{not json", b"x" * (600 * 1024)):
        status, _, answer = call(endpoint, "POST", "/v1/images/generations", body, key=None,
                                 headers={"Content-Type": "application/json"})
        assert status == 401 and answer["error"]["code"] == "invalid_api_key"
    assert upload(endpoint, "/v1/images/edits", {"prompt": PROMPT}, {"image": png_bytes()}, key=None)[0] == 401
    assert call(endpoint, "GET", "/healthz", key=None)[0] == 200
    assert call(endpoint, "GET", "/docs", key=None)[0] == 200
    paths = call(endpoint, "GET", "/openapi.json", key=None)[2]["paths"]
    assert {f"/v1/images/{name}" for name in ("generations", "edits", "variations", "upscale")} <= set(paths)
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert call(endpoint, "GET", "/v1/models")[0] == 200
    # The key is never written to any log of this Ray session.
    logs = Path(ray_cluster._private.worker._global_node.get_session_dir_path()) / "logs"
    for file in logs.rglob("*"):
        if file.is_file() and file.stat().st_size < 50 * 2**20:
            assert KEY.encode() not in file.read_bytes(), file


def test_overload_gets_503_with_retry_after_then_recovers(endpoint):
    def one(seed):
        return call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": seed, "n": 2})

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 8 and statuses.count(200) >= 16, statuses
    refused = [(head, body) for status, head, body in results if status == 503]
    assert all(head["retry-after"] == "3" for head, _ in refused)
    # Refused by the model deployment's queue (OpenAI-shaped) or by Serve's proxy in front of
    # the ingress (Serve's own text): both say when to come back. Which layer refuses depends
    # on timing (a refusal frees its ingress slot at once), so either may do all of it.
    kinds = {"model" if isinstance(body, dict) and body["error"]["code"] == "overloaded" else "proxy"
             for _, body in refused}
    assert kinds and kinds <= {"model", "proxy"}
    assert all(b"backpressure" in body for _, body in refused if not isinstance(body, dict))
    # Once the burst has drained, the endpoint answers again, with nothing restarted.
    assert call(endpoint, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": 2})[0] == 200


def test_a_model_scales_out_under_load_and_back_in_when_it_drops(endpoint, tiny, tmp_path):
    """A second application in the same Serve instance, whose model autoscales from 1 to 2
    replicas with reaction times in seconds: sustained load adds a replica, quiet removes it."""
    from ray import serve

    from serve.app import build_app, _deployment_name
    from serve.config import parse_config

    name = "synth:scaling"
    config = parse_config({
        "models": [{
            "name": name,
            "stages": [{"kind": "txt2img", **SHAPES, "steps": 12, "width": 32, "height": 32}],
            "cpus": 0.25, "max_batch_size": 1, "max_ongoing_requests": 1, "max_queued_requests": -1,
            "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                            "upscale_delay_s": 0.5, "downscale_delay_s": 2, "look_back_period_s": 1,
                            "metrics_interval_s": 0.5},
        }],
        "ingress": {"cpus": 0.25},
    })
    serve.run(build_app(config), name="scaling", route_prefix="/scaling", blocking=False)
    deployment = f"model-{_deployment_name(name)}"

    def running() -> int:
        status = serve.status().applications.get("scaling")
        if status is None or deployment not in status.deployments:
            return 0
        return status.deployments[deployment].replica_states.get("RUNNING", 0)

    def wait_for(replicas: int, seconds: float, work=None) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if running() == replicas:
                return True
            if work is not None:
                work()
            time.sleep(0.2)
        return False

    try:
        assert wait_for(1, 120), serve.status()
        base = f"{endpoint}/scaling"
        statuses: list[int] = []

        def burst():
            with ThreadPoolExecutor(6) as pool:
                statuses.extend(pool.map(
                    lambda seed: call(base, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": seed},
                                      key=None)[0], range(6)))

        # Six requests at a time against one request per replica: the controller adds the second.
        assert wait_for(2, 90, burst), serve.status()
        assert statuses and set(statuses) == {200}, statuses
        # Quiet: after downscale_delay_s the extra replica goes, and the model still answers.
        assert wait_for(1, 90), serve.status()
        assert call(base, "POST", "/v1/images/generations", {"prompt": PROMPT, "seed": 1}, key=None)[0] == 200
    finally:
        serve.delete("scaling")
