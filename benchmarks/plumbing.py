"""The plumbing benchmark: everything a job does except the model.

    synth bench --plumbing [--rows 10000] [--sizes 64,512] [--formats jpeg,png] [--out FILE]

A CONSTANT-IMAGE GENERATOR REPLACES THE MODEL: each txt2img row gets the same fixed image
(a gradient with noise) at once, so what is measured is the rest of a real job, run by `run_job` itself: preflight,
the commit log, read + prepare, the hand-off between Ray Data steps, encode, write and
commit. Reported per case (image side x format x layout): rows/s per CPU core end to end,
time to first commit, and each part's own CPU time per row (from the rows' metadata:
prepare, encode, write), as rows/s per core of that part alone. Also the time to first
commit of a 100-row table beside that of the largest one (the target: within 5 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


class ConstantImageWorker:
    """Stands in for a stage worker: every runnable row gets the same image, no model."""

    def __init__(self, stage: dict, index: int, **_ignored):
        self.index = index
        self.width, self.height = stage["width"], stage["height"]
        # A fixed image with a gradient and some noise, as encoders see in real images (a flat
        # grey image encodes several times faster, PNG most of all).
        ramp = np.add.outer(np.arange(self.height), np.arange(self.width)) * (200.0 / (self.height + self.width))
        noise = np.random.default_rng(0).integers(-12, 13, (self.height, self.width, 3))
        self.pixels = np.clip(ramp[:, :, None] + 30 + noise, 0, 255).astype(np.uint8).tobytes()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from pipeline import batch as B

        count = len(batch[B.ID])
        ok = batch[B.STATUS] == B.OK
        result = dict(batch)
        result[B.IMAGE] = B.object_column([self.pixels if good else b"" for good in ok])
        result[B.WIDTH] = np.where(ok, self.width, 0)
        result[B.HEIGHT] = np.where(ok, self.height, 0)
        result[B.stage_column(self.index, "ran")] = ok.copy()
        for name, value in (("width", self.width), ("height", self.height), ("seconds", 0.0)):
            result[B.stage_column(self.index, name)] = np.where(ok, value, 0)
        result[B.QUEUE_SECONDS], result[B.HANDOFF_AT] = B.queued(batch), B.handed_off(count)
        return result


@contextlib.contextmanager
def constant_images():
    """txt2img rows run by ConstantImageWorker for the duration (the declaration names the
    worker class a kind runs; nothing else changes)."""
    import cloudpickle

    import benchmarks.plumbing as module
    from pipeline.stages.txt2img import Txt2ImgStage

    cloudpickle.register_pickle_by_value(module)  # Ray's workers need not import benchmarks/
    saved = Txt2ImgStage.worker
    Txt2ImgStage.worker = ConstantImageWorker
    try:
        yield
    finally:
        Txt2ImgStage.worker = saved


def _table(path: Path, rows: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [f"row-{i:09d}" for i in range(rows)],
                             "prompt": [f"a grey square number {i}" for i in range(rows)]}), path)
    return str(path)


def run_case(work: Path, model: str, rows: int, side: int, image_format: str, layout: str) -> dict:
    """One job of `rows` rows through the whole pipeline, the model replaced."""
    import pyarrow.parquet as pq

    from pipeline.runner import run_job
    from pipeline.spec import parse_spec

    name = f"{rows}-{side}-{image_format}-{layout}"
    table = _table(work / f"{name}.parquet", rows)
    out = work / name
    spec = parse_spec({
        "name": "plumbing", "seed": 1, "input": {"path": table, "id_column": "id"},
        "stages": [{"kind": "txt2img", "model": model, "steps": 1, "batch_size": 16, "width": side, "height": side}],
        "output": {"path": str(out), "format": image_format, "layout": layout},
    })
    started = time.perf_counter()
    with constant_images():
        summary = run_job(spec)
    wall = time.perf_counter() - started
    parts = {"prepare": 0.0, "encode": 0.0, "write": 0.0}
    for file in (out / "metadata").glob("*.parquet"):
        metadata = pq.read_table(file, columns=[f"{part}_seconds" for part in parts])
        for part in parts:
            parts[part] += float(np.nansum(metadata.column(f"{part}_seconds").to_numpy(zero_copy_only=False)))
    cores = os.cpu_count() or 1
    objects = sum(1 for path in out.rglob("*") if path.is_file())
    return {
        "rows": rows, "side": side, "format": image_format, "layout": layout, "rows_ok": summary.rows_ok,
        "wall_s": round(wall, 2), "first_commit_s": round(summary.first_batch_seconds or 0.0, 2),
        "rows_per_s_per_core": round(rows / wall / cores, 1),
        "part_rows_per_s_per_core": {part: round(rows / seconds, 1) if seconds else None
                                     for part, seconds in parts.items()},
        "output_objects": objects,
    }


def bench_plumbing(rows: int, sizes: list[int], formats: list[str], layouts: list[str], out: str | None) -> dict:
    import ray

    from pipeline.ray_session import connect_ray
    from pipeline.tiny_models import write_tiny_model

    results = {"label": "PLUMBING ONLY: a constant-image generator replaces the model", "cores": os.cpu_count(),
               "cases": []}
    with tempfile.TemporaryDirectory(prefix="synth-plumbing-") as folder:
        work = Path(folder)
        model = str(write_tiny_model(work / "model", "txt2img"))  # passes preflight's check; never loaded
        connect_ray(local=True)
        try:
            small = run_case(work, model, 100, sizes[0], formats[0], layouts[0])
            results["first_commit_100_rows_s"] = small["first_commit_s"]
            for side in sizes:
                for image_format in formats:
                    for layout in layouts:
                        case = run_case(work, model, rows if side <= 64 else max(1000, rows // 10), side,
                                        image_format, layout)
                        print(json.dumps(case), flush=True)
                        results["cases"].append(case)
        finally:
            ray.shutdown()
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return results
