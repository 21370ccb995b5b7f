"""The benchmark: a bare diffusers loop and the full pipeline, measured in one run.

    synth bench [--rows 256] [--out benchmarks/results/cpu.json]

(a) bare loop: the same model, batch size, steps, cores and OpenMP setting as the stage
    actor, `pipe(...)` in a Python loop under inference_mode, after a warm-up batch; half
    its rows run before (b) and half after, so a drift of the machine's speed hits both;
(b) the full pipeline: read Parquet -> prepare -> stage actors -> encode + write, on a
    local Ray started for it, timed from before `ray.init` (end to end) and between its
    first and last committed chunk (steady state).
E = (b) / (a). Also: time to first image, start-up (that time less the first chunk's own
work, with the ray.init part), the per-image time split from the metadata, each stage
actor's busy share, bytes spilled from the object store, peak memory.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Workload:
    """tiny (the CPU profile): the project's tiny txt2img model at 64 px. The GPU profiles
    (benchmarks/architectures.py: sd15, sdxl, sdxl-turbo, flux-schnell, stable-cascade):
    the full architectures with random weights at their native size."""

    profile: str = "tiny"
    rows: int = 256
    batch_size: int = 16
    steps: int = 8
    width: int = 64
    height: int = 64
    guidance_scale: float = 7.5
    image_format: str = "png"
    # dense bf16 TFLOP/s of the device, for share of peak (H100: about 790, shared/PERF.md)
    peak_tflops: float = 790.0


@dataclass
class Result:
    workload: dict
    machine: dict
    bare_images_per_s: float = 0.0
    bare_halves_images_per_s: list = field(default_factory=list)  # before, after the pipeline
    pipeline_images_per_s_end_to_end: float = 0.0
    pipeline_images_per_s_steady: float = 0.0
    efficiency_end_to_end: float = 0.0
    efficiency_steady: float = 0.0
    time_to_first_image_s: float = 0.0  # from before ray.init to the first chunk committed
    # Time to first image less the first chunk's own work (prepare, stages, encode, write):
    # what the pipeline spends before it generates, waits for new worker processes included.
    startup_s: float = 0.0
    ray_init_s: float = 0.0  # the part of start-up spent in ray.init
    wall_s: float = 0.0
    split_ms_per_image: dict = field(default_factory=dict)
    actor_busy_share: list = field(default_factory=list)
    spilled_bytes: int = 0
    peak_rss_bytes: int = 0
    device: str = "cpu"
    tflop_per_image: float | None = None
    share_of_peak: float | None = None  # pipeline steady images/s x TFLOP/image / peak


class PeakMemory:
    """Peak resident memory of this process and all its descendants (Ray's raylet and
    workers, for a local cluster), sampled every 0.2 s."""

    def __init__(self):
        import psutil

        self._root = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for process in [self._root, *self._root.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def prompts(count: int) -> list[str]:
    colours = ["red", "green", "blue", "yellow", "orange", "purple"]
    shapes = ["circle", "square", "triangle"]
    return [f"a {colours[i % 6]} {shapes[i // 6 % 3]} on a {'white' if i % 2 else 'black'} background #{i}" for i in range(count)]


def bare_loop_like_ray(model: str, work: Workload, threads: int, rows: range) -> tuple[int, float]:
    """The bare loop over these prompt rows in a fresh process with the OpenMP setting Ray
    gives a stage actor (OMP_NUM_THREADS=1 for one CPU, torch threads set explicitly).
    Measured here: that setting alone makes the same loop about 20% faster on this machine,
    so the baseline must have it too, or E would credit the pipeline with an environment
    variable. Returns (images, seconds)."""
    import subprocess
    import sys

    code = (
        "import json, sys; from benchmarks.harness import Workload, bare_loop; "
        f"print(json.dumps(bare_loop({model!r}, Workload(**{asdict(work)!r}), {threads}, "
        f"range({rows.start}, {rows.stop}))))"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    images, seconds = json.loads(result.stdout.strip().splitlines()[-1])
    return images, seconds


def bare_loop(model: str, work: Workload, threads: int, rows: range) -> tuple[int, float]:
    """(images, seconds) of diffusers alone over these prompt rows, after one warm-up batch."""
    import torch
    from diffusers import AutoPipelineForText2Image

    from pipeline.families import detect_family
    from pipeline.models import register_moved_classes, torch_dtype

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    register_moved_classes()  # Stable Cascade's VQGAN, as the stage loader does
    pipe = AutoPipelineForText2Image.from_pretrained(
        model, use_safetensors=True, dtype=torch_dtype("auto", device)
    ).to(device)  # the stage workers' dtype rule: bf16 on CUDA, fp32 on CPU
    pipe.set_progress_bar_config(disable=True)
    # The stage's call adapter: the arguments a stage of this family passes (Stable
    # Cascade's steps and guidance are its prior's, and its decoder's steps are fixed).
    family = detect_family(type(pipe).__name__)
    texts = prompts(work.rows)

    def run(first: int, stop: int):
        generators = [torch.Generator().manual_seed(i) for i in range(first, stop)]
        call = {"prompt": texts[first:stop], "num_inference_steps": work.steps, "guidance_scale": work.guidance_scale,
                "width": work.width, "height": work.height, "generator": generators}
        # inference_mode, as the stage workers use: the baseline gets every trick they get
        with torch.inference_mode():
            pipe(**family.arguments("txt2img", call, (work.width, work.height)), output_type="np")

    run(rows.start, min(rows.start + work.batch_size, rows.stop))
    started = time.perf_counter()
    for first in range(rows.start, rows.stop, work.batch_size):
        run(first, min(first + work.batch_size, rows.stop))
    return len(rows), time.perf_counter() - started


def spilled_bytes() -> int:
    import re

    import ray
    from ray._private.internal_api import memory_summary

    # This Ray's own address: with none, Ray refuses when another instance runs on the machine.
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    match = re.search(r"Spilled (\d+) MiB", text)
    return int(match.group(1)) * 2**20 if match else 0


def steady_rate(table: list[dict]) -> float:
    """Images/s once the pipeline is full: the least-squares slope of rows committed against
    commit time (committed_at), over every chunk after the first. A slope uses every
    commit, so one late or early chunk moves it less than a first-to-last window would, and
    it sees writes when they happen, not when the driver's in-order iterator reports them."""
    per_chunk: dict[float, int] = {}
    for row in table:
        per_chunk[row["committed_at"]] = per_chunk.get(row["committed_at"], 0) + 1
    stamps = sorted(per_chunk)[1:]
    if len(stamps) < 2:
        return 0.0
    cumulative, total = [], 0
    for stamp in stamps:
        total += per_chunk[stamp]
        cumulative.append(total)
    mean_t, mean_n = sum(stamps) / len(stamps), sum(cumulative) / len(cumulative)
    spread = sum((t - mean_t) ** 2 for t in stamps)
    return sum((t - mean_t) * (n - mean_n) for t, n in zip(stamps, cumulative)) / spread if spread else 0.0


def startup_seconds(table: list[dict], time_to_first_image: float) -> float:
    """Time to first image less the recorded work of the chunk that committed first: its
    rows' prepare, stage, encode and write seconds (each a row's share of its chunk's time).
    What remains is start-up: the waits for processes and models before that work began,
    and that chunk's waits in queues. End-to-end E is about steady-state E x
    (1 - start-up / wall)."""
    first = min(row["committed_at"] for row in table)
    parts, _ = split_from_metadata([row for row in table if row["committed_at"] == first], rows=1)
    work_ms = sum(ms for part, ms in parts.items() if part != "waiting in queues")
    return time_to_first_image - work_ms / 1000


def read_metadata(output: str) -> list[dict]:
    import pyarrow.dataset as pds

    return pds.dataset(os.path.join(output, "metadata"), format="parquet").to_table().to_pylist()


def _recorded(seconds: float | None) -> float:
    """A timing from the metadata; none recorded (None, or NaN) counts as 0."""
    return seconds if seconds is not None and seconds == seconds else 0.0


def split_from_metadata(table: list[dict], rows: int) -> tuple[dict, list[float]]:
    """Milliseconds per image for each part, summed over every row's record."""
    totals = {"prepare (read, decode)": 0.0, "text encode": 0.0, "denoise": 0.0, "vae": 0.0,
              "image encode": 0.0, "write": 0.0, "waiting in queues": 0.0}
    stage_busy: dict[int, float] = {}
    for row in table:
        totals["prepare (read, decode)"] += _recorded(row.get("prepare_seconds"))
        totals["image encode"] += _recorded(row["encode_seconds"])
        totals["write"] += _recorded(row["write_seconds"])
        totals["waiting in queues"] += _recorded(row.get("queue_seconds"))
        for stage in row["stages"]:
            seconds = _recorded(stage["seconds"])
            text, vae = _recorded(stage["text_encode_seconds"]), _recorded(stage["vae_seconds"])
            totals["text encode"] += text
            totals["vae"] += vae
            totals["denoise"] += seconds - text - vae
            stage_busy[stage["index"]] = stage_busy.get(stage["index"], 0.0) + seconds
    split = {name: 1000 * value / rows for name, value in totals.items()}
    return split, [stage_busy[i] for i in sorted(stage_busy)]


def run_pipeline(model: str, work: Workload, root: Path) -> tuple:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from pipeline.runner import run_job
    from pipeline.spec import parse_spec

    pq.write_table(pa.table({"prompt": prompts(work.rows)}), root / "prompts.parquet")
    spec = parse_spec(
        {
            "name": "bench",
            "input": {"path": str(root / "prompts.parquet")},
            "stages": [
                {"kind": "txt2img", "model": model, "steps": work.steps, "guidance_scale": work.guidance_scale,
                 "width": work.width, "height": work.height, "batch_size": work.batch_size}
            ],
            "output": {"path": str(root / "out"), "format": work.image_format},
        }
    )
    started, started_clock = time.perf_counter(), time.time()
    ray.init(include_dashboard=False, logging_level="ERROR")  # counted: part of end to end
    ray_init = time.perf_counter() - started
    summary = run_job(spec)
    wall = time.perf_counter() - started
    spilled = spilled_bytes()
    ray.shutdown()
    return summary, wall, started_clock, spilled, ray_init


def bench(work: Workload, out: str | None = None, log=print) -> Result:
    from pipeline.tiny_models import write_tiny_model

    cores = os.cpu_count() or 1
    result = Result(
        workload=asdict(work),
        machine={"cpus": cores, "platform": platform.platform(), "processor": platform.processor() or "unknown"},
    )
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as tmp:
        root = Path(tmp)
        if work.profile == "tiny":
            model = str(write_tiny_model(root / "model", "txt2img"))
        else:
            from benchmarks.architectures import tflop_per_image, write_model

            log(f"bench: building the {work.profile} architecture with random weights")
            model = str(write_model(root / "model", work.profile))
            result.tflop_per_image = tflop_per_image(work.profile, work.steps, work.guidance_scale)
        # The bare loop runs half its rows before the pipeline and half after: this shared
        # VM's speed drifts, by up to 30% between the halves of one run, and a baseline
        # taken on one side only moved E by as much. Split, a drift hits both sides alike.
        half = work.rows // 2 // work.batch_size * work.batch_size or work.rows
        log(f"bench: bare diffusers loop, {half} images, batch {work.batch_size}, {cores} threads")
        before = bare_loop_like_ray(model, work, cores, range(0, half))
        log(f"bench: full pipeline on a local Ray with {cores} CPUs")
        with PeakMemory() as memory:
            summary, wall, started_clock, spilled, ray_init = run_pipeline(model, work, root)
        after = (0, 0.0)
        if half < work.rows:
            log(f"bench: bare diffusers loop, the other {work.rows - half} images")
            after = bare_loop_like_ray(model, work, cores, range(half, work.rows))
        result.bare_images_per_s = (before[0] + after[0]) / (before[1] + after[1])
        result.bare_halves_images_per_s = [n / s for n, s in (before, after) if s]
        result.peak_rss_bytes = memory.peak
        result.spilled_bytes = spilled
        result.wall_s = wall
        result.pipeline_images_per_s_end_to_end = summary.rows_ok / wall
        metadata = read_metadata(str(root / "out"))
        # The first image is there when its chunk commits (committed_at, this machine's
        # clock). The driver's iterator hears of it about 2 s later on 2 cores, so its
        # first batch would overstate the time.
        first_commit = min((row["committed_at"] for row in metadata), default=float("nan"))
        result.time_to_first_image_s = first_commit - started_clock  # NaN: nothing committed
        result.startup_s = startup_seconds(metadata, result.time_to_first_image_s) if metadata else float("nan")
        result.ray_init_s = ray_init
        result.pipeline_images_per_s_steady = steady_rate(metadata)
        result.efficiency_end_to_end = result.pipeline_images_per_s_end_to_end / result.bare_images_per_s
        result.efficiency_steady = result.pipeline_images_per_s_steady / result.bare_images_per_s
        result.split_ms_per_image, busy = split_from_metadata(metadata, work.rows)
        result.device = metadata[0]["stages"][0]["device"] if metadata else "unknown"
        if result.tflop_per_image:
            result.share_of_peak = result.pipeline_images_per_s_steady * result.tflop_per_image / work.peak_tflops
        # Busy seconds of each stage's actors over the wall time the table shows (ray.init
        # included). One actor per stage here, so a share of 1 is a stage that never idled.
        result.actor_busy_share = [b / wall for b in busy]
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(asdict(result), indent=2))
    log(table(result))
    return result


def table(result: Result) -> str:
    lines = [
        f"{'bare diffusers loop':<34}{result.bare_images_per_s:8.2f} images/s"
        + (f"   (before / after the pipeline: {' / '.join(f'{r:.2f}' for r in result.bare_halves_images_per_s)})"
           if len(result.bare_halves_images_per_s) == 2 else ""),
        f"{'pipeline, steady state':<34}{result.pipeline_images_per_s_steady:8.2f} images/s   "
        f"E = {result.efficiency_steady:.2f}",
        f"{'pipeline, end to end':<34}{result.pipeline_images_per_s_end_to_end:8.2f} images/s   "
        f"E = {result.efficiency_end_to_end:.2f}",
        f"{'time to first image':<34}{result.time_to_first_image_s:8.2f} s",
        f"{'start-up (before the first chunk)':<34}{result.startup_s:8.2f} s   (ray.init {result.ray_init_s:.2f} s)",
        f"{'wall (incl. ray.init)':<34}{result.wall_s:8.2f} s",
        f"{'stage actor busy share':<34}{', '.join(f'{b:.2f}' for b in result.actor_busy_share)}",
        f"{'object store spilled':<34}{result.spilled_bytes / 2**20:8.1f} MiB",
        f"{'peak memory (all processes)':<34}{result.peak_rss_bytes / 2**30:8.2f} GiB",
        f"{'device':<34}{result.device}",
        *(
            [f"{'share of peak':<34}{result.share_of_peak:8.1%}   ({result.tflop_per_image:.1f} TFLOP/image)"]
            if result.share_of_peak is not None
            else []
        ),
        "time per image, by part (ms, summed over workers):",
    ]
    lines += [f"  {name:<32}{ms:8.2f}" for name, ms in result.split_ms_per_image.items()]
    return "\n".join(lines)
