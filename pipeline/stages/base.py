"""What every stage worker shares: load a pipeline once, group rows, seed, convert, record.

A stage worker is a plain object with a batch in and a batch out (dict of numpy columns,
see pipeline/batch.py). Ray Data runs it as an actor-pool UDF; Serve and tests can call it
directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from pipeline import batch as B
from pipeline.keys import stage_seed
from pipeline.spec import StageSpec
from pipeline.stages.timing import PartTimer


@dataclass
class Group:
    """Rows of one batch that share every generation parameter and their input's size:
    they go through the pipeline in one call."""

    rows: list[int]
    prompts: list[str]
    negative_prompts: list[str] | None
    generators: list[Any]
    steps: int
    guidance_scale: float
    strength: float
    width: int  # 0: the model's default
    height: int
    images: list[Any] | None = None  # PIL RGB inputs (img2img, inpaint, upscale)
    masks: list[Any] | None = None  # PIL L masks (inpaint)


def _multiple_of_8(pixels: float) -> int:
    return max(8, int(pixels) // 8 * 8)


def _target_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The size an input image is resized to: width x height when both are set; one of
    them with the other side scaled to keep the image's aspect ratio; else the image's own
    size. Sides are rounded down to a multiple of 8 (the VAE works on 8x8 cells; diffusers
    refuses other sizes in some pipelines and silently crops in others)."""
    if width and height:
        return width, height
    if width:
        return width, _multiple_of_8(size[1] * width / size[0])
    if height:
        return _multiple_of_8(size[0] * height / size[1]), height
    return _multiple_of_8(size[0]), _multiple_of_8(size[1])


# Out-of-memory errors that torch raises as a plain RuntimeError: the CPU allocator's, and
# CUDA libraries failing to get a workspace.
_OUT_OF_MEMORY_TEXT = ("DefaultCPUAllocator: can't allocate memory", "CUDA error: out of memory",
                       "CUBLAS_STATUS_ALLOC_FAILED")


def _out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or any(text in str(error) for text in _OUT_OF_MEMORY_TEXT)


def _device_label(device: str) -> str:
    """Where this worker runs, with the GPU ids Ray assigned (also seen without a real GPU)."""
    try:
        import ray

        if ray.is_initialized():
            ids = ray.get_gpu_ids()
            if ids:
                return f"{device} (ray gpu {','.join(str(i) for i in ids)})"
    except Exception:  # outside a Ray worker: no assignment to report
        pass
    return device


class StageWorker:
    kind: ClassVar[str]
    # Generation parameters this kind takes, i.e. the per-row overrides it can honour.
    params: ClassVar[tuple[str, ...]]
    needs_image: ClassVar[bool] = True
    needs_mask: ClassVar[bool] = False

    def __init__(
        self,
        stage: StageSpec | dict,
        index: int = 0,
        overrides: Sequence[str] = (),
        storage_options: dict[str, Any] | None = None,
        torch_threads: int | None = None,
    ):
        import torch

        from pipeline.models import load_pipeline, resolve_model

        # 1. The device: Ray pins the actor to its GPUs through CUDA_VISIBLE_DEVICES, so
        # "cuda" is this actor's own GPU; without one the work runs on the CPU.
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.spec = stage if isinstance(stage, StageSpec) else StageSpec.model_validate(stage)
        self.index = index
        self.overrides = tuple(overrides)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device_label = _device_label(self.device)

        # 2. The model, once per actor.
        self.model = resolve_model(self.spec.model, self.spec.revision, storage_options, self.spec.allow_pickle)
        self.pipe = load_pipeline(
            self.kind, self.model, self.spec.dtype, self.device, self.spec.scheduler, self.spec.allow_pickle
        )
        self.timer = PartTimer(self.pipe, self.device)

    # ------------------------------------------------------------ subclass hooks

    def generate(self, group: Group):
        """Run the diffusers pipeline on one group with output_type="pt"; return its output
        (`.images`: a (n, 3, H, W) tensor in [0, 1])."""
        raise NotImplementedError

    def group_error(self, group: Group) -> str | None:
        """A reason this group's parameters cannot run, or None."""
        if group.strength == group.strength and int(group.steps * group.strength) < 1:  # not NaN
            return (
                f"stages.{self.index} ({self.kind}): steps x strength = {group.steps} x {group.strength:g} "
                "leaves no denoising step; raise steps or strength"
            )
        return None

    def _truncated(self, batch: dict[str, np.ndarray], rows: list[int]) -> set[int]:
        """Rows whose prompt is longer than the text encoder takes (diffusers truncates it)."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is None or not rows:
            return set()
        lengths = [len(ids) for ids in tokenizer([str(batch[B.PROMPT][r]) for r in rows])["input_ids"]]
        return {row for row, length in zip(rows, lengths) if length > tokenizer.model_max_length}

    def row_error(self, batch: dict[str, np.ndarray], row: int) -> str | None:
        """A reason this row cannot run in this stage, or None."""
        if self.needs_image and not batch[B.WIDTH][row]:
            return f"stages.{self.index} ({self.kind}): the row has no input image"
        return None

    def size_label(self, group: Group) -> str:
        """The size a group generates at, for messages."""
        if group.images:
            width, height = group.images[0].size
        elif group.width or group.height:  # 0: the model's default for that side
            width, height = group.width or "default", group.height or "default"
        else:
            return "the model's default size"
        return f"{width}x{height} px"

    def smaller_fields(self) -> str:
        """What to lower for this stage to need less memory."""
        return f"a smaller stages.{self.index}.batch_size, or stages.{self.index}.width and height"

    # ------------------------------------------------------------ the batch path

    def _row_params(self, batch: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        spec = self.spec
        values = {
            "steps": np.full(count, spec.steps, np.float64),
            "guidance_scale": np.full(count, spec.guidance_scale, np.float64),
            "strength": np.full(count, spec.strength if spec.strength is not None else np.nan),
            "width": np.full(count, spec.width or 0, np.float64),
            "height": np.full(count, spec.height or 0, np.float64),
        }
        for param in self.overrides:
            column = batch[B.override_column(param)]
            values[param] = np.where(np.isnan(column), values[param], column)
        return values

    def _groups(self, batch: dict[str, np.ndarray], rows: list[int], params: dict[str, np.ndarray]):
        import torch

        keyed: dict[tuple, list[int]] = {}
        names = ("steps", "guidance_scale", "strength", "width", "height")
        # NaN (strength of kinds without one) becomes -1: NaN != NaN would split every row
        # into a group of its own.
        columns = [np.nan_to_num(params[name], nan=-1.0) for name in names]
        for row in rows:
            key = tuple(float(column[row]) for column in columns)
            key += (int(batch[B.WIDTH][row]), int(batch[B.HEIGHT][row]))
            keyed.setdefault(key, []).append(row)
        size = self.spec.batch_size
        # Groups of at most batch_size rows, in row order: fixed for a given chunk.
        sliced = [(key, members[i : i + size]) for key, members in keyed.items() for i in range(0, len(members), size)]
        for (steps, guidance, strength, width, height, _, _), members in sliced:
            negatives = [batch[B.NEGATIVE_PROMPT][r] or self.spec.negative_prompt or "" for r in members]
            yield Group(
                rows=members,
                prompts=[str(batch[B.PROMPT][r]) for r in members],
                negative_prompts=negatives if any(negatives) else None,
                # CPU generators: the same seed gives the same latents on any device.
                generators=[
                    torch.Generator("cpu").manual_seed(stage_seed(int(batch[B.SEED][r]), self.index)) for r in members
                ],
                steps=int(steps),
                guidance_scale=guidance,
                strength=strength if strength >= 0 else float("nan"),
                width=int(width),
                height=int(height),
                images=self._inputs(batch, members, int(width), int(height)) if self.needs_image else None,
                masks=self._inputs(batch, members, int(width), int(height), mask=True) if self.needs_mask else None,
            )

    def _inputs(self, batch, rows: list[int], width: int, height: int, mask: bool = False) -> list[Any]:
        """PIL inputs for these rows, resized to the stage's size (see _target_size): RGB
        images with Lanczos, or L masks with nearest, which keeps a binary mask binary. A
        mask goes to its image's size, which differs from its own when an earlier stage
        of the chain resized the image."""
        from PIL import Image

        columns = (B.MASK, B.MASK_WIDTH, B.MASK_HEIGHT) if mask else (B.IMAGE, B.WIDTH, B.HEIGHT)
        channels, resample = (1, Image.NEAREST) if mask else (3, Image.LANCZOS)
        inputs = []
        for r in rows:
            pixels, w, h = (batch[column][r] for column in columns)
            item = Image.fromarray(B.image_view(pixels, w, h, channels))
            size = _target_size((int(batch[B.WIDTH][r]), int(batch[B.HEIGHT][r])), width, height)
            inputs.append(item.resize(size, resample) if item.size != size else item)
        return inputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        count = len(batch[B.ID])
        queue_seconds = B.queued(batch)
        status = batch[B.STATUS].copy()
        errors = batch[B.ERROR].copy()
        out_images = batch[B.IMAGE].copy()
        widths, heights = batch[B.WIDTH].copy(), batch[B.HEIGHT].copy()
        record = {
            "ran": np.zeros(count, bool),
            "seed": np.zeros(count, np.int64),
            "steps": np.zeros(count, np.int64),
            "guidance_scale": np.full(count, np.nan),
            "strength": np.full(count, np.nan),
            "width": np.zeros(count, np.int64),
            "height": np.zeros(count, np.int64),
            "seconds": np.full(count, np.nan),
            "text_encode_seconds": np.full(count, np.nan),
            "vae_seconds": np.full(count, np.nan),
            "prompt_truncated": np.zeros(count, bool),
            "nsfw": np.zeros(count, bool),
        }

        # 1. Rows this stage can run: not failed upstream, and valid for this kind.
        runnable = []
        for row in range(count):
            if status[row] != B.OK:
                continue
            reason = self.row_error(batch, row)
            if reason:
                status[row], errors[row] = B.FAILED, reason
            else:
                runnable.append(row)
        truncated = self._truncated(batch, runnable)

        # 2. One pipeline call per group of rows with equal parameters and input size.
        params = self._row_params(batch, count)
        for group in self._groups(batch, runnable, params):
            rows = group.rows
            record["ran"][rows] = True
            record["seed"][rows] = [stage_seed(int(batch[B.SEED][r]), self.index) for r in rows]
            record["steps"][rows] = group.steps
            record["guidance_scale"][rows] = group.guidance_scale
            record["strength"][rows] = group.strength
            record["prompt_truncated"][rows] = [r in truncated for r in rows]
            problem = self.group_error(group)
            self.timer.take()
            started = time.perf_counter()
            if problem is None:
                try:
                    with torch.inference_mode():
                        output = self.generate(group)
                        pixels = output.images
                        # 3. NaN check and float -> uint8 on the device, before the copy to the host.
                        bad = torch.isnan(pixels).flatten(1).any(dim=1).cpu().numpy()
                        pixels = (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                except ValueError as error:  # diffusers refusing these inputs: these rows only
                    problem = f"stages.{self.index} ({self.kind}): the pipeline refused the input: {error}"
                except RuntimeError as error:
                    # Out of memory fails this group's rows, not the job: raised, it would end
                    # the job, and every rerun would stop at the same chunk. Other errors are
                    # bugs or broken devices and still end it.
                    if not _out_of_memory(error):
                        raise
                    problem = (
                        f"stages.{self.index} ({self.kind}): out of {self.device} memory for {len(rows)} images "
                        f"at {self.size_label(group)}; run with {self.smaller_fields()} into a new output.path: "
                        f"{str(error).splitlines()[0][:200]}"
                    )
                if problem is not None and self.device == "cuda":
                    torch.cuda.empty_cache()  # the failed call's blocks, freed once its frames are gone
            if problem is not None:
                status[rows] = B.FAILED
                errors[rows] = problem
                continue
            seconds = (time.perf_counter() - started) / len(rows)
            parts = self.timer.take()
            record["text_encode_seconds"][rows] = parts.get("text_encode", 0.0) / len(rows)
            record["vae_seconds"][rows] = parts.get("vae", 0.0) / len(rows)
            flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(rows)
            for position, row in enumerate(rows):
                record["seconds"][row] = seconds
                record["nsfw"][row] = bool(flagged[position])
                if bad[position]:
                    status[row] = B.FAILED
                    errors[row] = f"stages.{self.index} ({self.kind}): the model produced NaN pixels"
                    continue
                out_images[row] = pixels[position].tobytes()
                heights[row], widths[row] = pixels.shape[1], pixels.shape[2]
                record["height"][row], record["width"][row] = pixels.shape[1], pixels.shape[2]

        result = dict(batch)
        result.update({B.IMAGE: out_images, B.WIDTH: widths, B.HEIGHT: heights, B.STATUS: status, B.ERROR: errors})
        for field, values in record.items():
            result[B.stage_column(self.index, field)] = values
        result[B.stage_column(self.index, "device")] = B.object_column([self.device_label] * count)
        result[B.stage_column(self.index, "model_revision")] = B.object_column([self.model.revision] * count)
        result[B.QUEUE_SECONDS], result[B.HANDOFF_AT] = queue_seconds, B.handed_off(count)
        return result
