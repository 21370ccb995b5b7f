"""Shared fixtures: one local Ray for the session, a real S3 server on loopback, tiny models.

Ray is started with 2 CPUs (the size of this project's CI machine, and the case that
deadlocks when actors take every CPU) and 2 fake GPUs, so GPU pinning is checked here while
the work runs on the CPU.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

# Test credentials for the loopback S3 server. Set before Ray starts so its workers inherit
# them, as they would inherit real ones from the environment or an instance profile.
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAY_DEDUP_LOGS": "0",
        # The node's model cache, here a throwaway folder; workers inherit it from Ray's start.
        "SYNTH_CACHE": tempfile.mkdtemp(prefix="synth-cache-"),
    }
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint):
    """A fresh bucket: (bucket URI, storage_options, s3fs filesystem)."""
    import s3fs

    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    fs = s3fs.S3FileSystem(**options)
    bucket = f"synth-test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return f"s3://{bucket}", options, fs


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint):
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, str]:
    """Tiny model folders by kind (img2img shares the txt2img folder, as real models do)."""
    from pipeline.tiny_models import write_tiny_model

    root = tmp_path_factory.mktemp("models")
    paths = {kind: str(write_tiny_model(root / kind, kind)) for kind in ("txt2img", "inpaint", "upscale")}
    paths["img2img"] = paths["txt2img"]
    return paths


def stage(kind: str, model: str, **fields) -> dict:
    """A stage spec with test-sized defaults: 2 steps, 32 px, small batches."""
    base = {"kind": kind, "model": model, "steps": 2, "batch_size": 2}
    if kind == "txt2img":
        base.update(width=32, height=32)
    base.update(fields)
    return base


def job(input_path: str, output_path: str, stages: list[dict], **fields) -> dict:
    spec = {"name": "test", "seed": 7, "input": {"path": input_path}, "stages": stages, "output": {"path": output_path}}
    spec.update(fields)
    return spec


def read_metadata(output_path: str, storage_options: dict | None = None):
    """The metadata dataset as a list of row dicts, sorted by id."""
    import pyarrow.parquet as pq

    from pipeline import storage

    fs, root = storage.filesystem(output_path, storage_options)
    files = sorted(fs.glob(storage.join(root, "metadata", "*.parquet")))
    rows = []
    for file in files:
        with fs.open(file, "rb") as handle:
            rows.extend(pq.read_table(handle).to_pylist())
    return sorted(rows, key=lambda row: row["id"])


def png_bytes(colour=(200, 30, 30), size=(32, 32), mode="RGB") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def half_mask(size=(32, 32)) -> bytes:
    """A mask whose right half is white (regenerate) and left half black (keep)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.zeros((size[1], size[0]), np.uint8)
    pixels[:, size[0] // 2 :] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_table(path: str | Path, columns: dict, storage_options: dict | None = None) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import storage

    fs, inner = storage.filesystem(str(path), storage_options)
    with fs.open(inner, "wb") as handle:
        pq.write_table(pa.table(columns), handle)
    return str(path)


def upload_folder(fs, local: Path, remote: str) -> None:
    """Copy a local folder (a model) to an s3 prefix."""
    for file in sorted(Path(local).rglob("*")):
        if file.is_file():
            fs.put_file(str(file), f"{remote}/{file.relative_to(local).as_posix()}")


# Debian's headless Chromium and its matching driver (the report page and the Serve playground).
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"



@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver): Debian's Chromium and its matching chromedriver, never a download.
    Skips where they are not installed, except under CI, where they must be. (Session scope:
    a test that asks for it first skips before Ray starts and its job runs.)"""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    if missing:
        reason = f"no headless browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM, CHROMEDRIVER


@pytest.fixture
def browser(chromium):
    """A headless Chromium driven by selenium (as root it needs --no-sandbox)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=chromium[1]), options=options)
    yield driver
    driver.quit()
