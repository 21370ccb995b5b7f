"""`synth bench --serve`: load on the Serve endpoint, at bounded concurrency.

It starts the endpoint on a local Ray (the built-in shapes model, as `synth serve` serves
it) on a free port of 127.0.0.1, or uses the one at --url, and sends seeded txt2img requests
from 1, 4 and 16 threads. Per level: images/s, p50 and p99 latency, the mean
x-synth-batch-size. The batching gain is images/s at concurrency 16 with @serve.batch
gathering up to max_batch_size requests, over the same load with max_batch_size 1 (the
endpoint is redeployed with it; only with a local endpoint).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPTS = [f"a {colour} {shape} on a {background} background" for colour in ("red", "green", "blue", "purple")
           for shape in ("circle", "square", "triangle") for background in ("white", "black")]


def _request(url: str, seed: int, key: str | None) -> tuple[float, int, int]:
    """(seconds, status, batch size) of one generation."""
    body = json.dumps({"prompt": PROMPTS[seed % len(PROMPTS)], "seed": seed}).encode()
    request = urllib.request.Request(f"{url}/v1/images/generations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            response.read()
            status, batch = response.status, int(response.headers.get("x-synth-batch-size", 0))
    except urllib.error.HTTPError as error:
        status, batch = error.code, 0
    return time.perf_counter() - started, status, batch


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def load(url: str, concurrency: int, requests: int, key: str | None = None, first_seed: int = 0) -> dict:
    """`requests` requests from `concurrency` threads, each sending its next one when the last returns."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda seed: _request(url, seed, key), range(first_seed, first_seed + requests)))
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, status, _ in results if status == 200]
    batches = [batch for _, status, batch in results if status == 200]
    return {
        "concurrency": concurrency, "requests": requests, "ok": len(latencies), "wall_s": round(wall, 2),
        "images_per_s": round(len(latencies) / wall, 3),
        "p50_s": round(_percentile(latencies, 0.5), 3) if latencies else None,
        "p99_s": round(_percentile(latencies, 0.99), 3) if latencies else None,
        "mean_batch_size": round(statistics.mean(batches), 2) if batches else None,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _deploy(config) -> None:
    from ray import serve

    from serve.app import build_app

    serve.run(build_app(config), name="synth", route_prefix="/", blocking=False)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpus": os.cpu_count(), "cpu_model": model, "gpus": 0, "load_average_at_start": os.getloadavg()[0]}


def bench_serve(url: str | None = None, levels=(1, 4, 16), requests_per_thread: int = 4, key: str | None = None,
                out: str | None = None) -> dict:
    figures = {"machine": machine(), "levels": [], "model": "synth:shapes", "steps": 20, "size": "32x32"}
    local = url is None
    if local:
        import ray
        from ray import serve

        from serve.config import load_config

        config = load_config()
        config = config.model_copy(update={"port": _free_port()})
        ray.init(address="local", include_dashboard=False)
        serve.start(http_options={"host": "127.0.0.1", "port": config.port})
        _deploy(config)
        url = f"http://127.0.0.1:{config.port}"
    try:
        _request(url, 10_000, key)  # warm-up: the replica's first call pays one-time costs
        for concurrency in levels:
            requests = max(8, concurrency * requests_per_thread)
            result = load(url, concurrency, requests, key)
            figures["levels"].append(result)
            print(f"synth: concurrency {concurrency:>2}: {result['images_per_s']:.2f} images/s, "
                  f"p50 {result['p50_s']} s, p99 {result['p99_s']} s, mean batch {result['mean_batch_size']} "
                  f"({result['ok']}/{requests} ok)", flush=True)
        if local:
            # The same top load, one request per call: what @serve.batch gains.
            model = config.models[0].model_copy(update={"max_batch_size": 1})
            _deploy(config.model_copy(update={"models": [model]}))
            _request(url, 10_001, key)
            top = max(levels)
            unbatched = load(url, top, max(8, top * requests_per_thread), key)
            figures["unbatched"] = unbatched
            batched = next(level for level in figures["levels"] if level["concurrency"] == top)
            figures["batching_gain"] = round(batched["images_per_s"] / unbatched["images_per_s"], 2)
            print(f"synth: concurrency {top} with max_batch_size 1: {unbatched['images_per_s']:.2f} images/s, "
                  f"p50 {unbatched['p50_s']} s, p99 {unbatched['p99_s']} s; batching gain "
                  f"{figures['batching_gain']}x", flush=True)
    finally:
        if local:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    if out:
        with open(out, "w") as handle:
            json.dump(figures, handle, indent=2)
    return figures
