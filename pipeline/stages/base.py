"""What every stage worker shares: load a pipeline once, group rows, seed, convert, record.

A stage worker is a plain object with a batch in and a batch out (dict of numpy columns,
see pipeline/batch.py). Ray Data runs it as an actor-pool UDF; Serve and tests call it
directly, and may hand it a pipeline they already loaded.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from pipeline import batch as B
from pipeline.families import ROW_ARGUMENTS, resolve_family
from pipeline.keys import batch_name, stage_seed
from pipeline.params import ROW_PARAMS
from pipeline.record import WORKER_FIELDS
from pipeline.stages.timing import PartTimer

logger = logging.getLogger("synth.stages")


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
    lora: str = ""  # the adapter the rows pick ("": the stage's whole set; see pipeline/lora.py)
    controls: list[Any] | None = None  # PIL RGB ControlNet conditioning images, at the output size
    control_scale: float = float("nan")


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


class MissingColumns(ValueError):
    """A batch handed to a worker lacks columns the stage reads."""


@dataclass
class Outcome:
    """The columns a stage call writes: copies of the batch's, updated row by row."""

    status: np.ndarray
    errors: np.ndarray
    images: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    ran: np.ndarray
    record: dict[str, np.ndarray]  # pipeline/record.py's worker fields

    @classmethod
    def start(cls, batch: dict[str, np.ndarray]) -> "Outcome":
        count = len(batch[B.ID])
        return cls(
            status=batch[B.STATUS].copy(),
            errors=batch[B.ERROR].copy(),
            images=batch[B.IMAGE].copy(),
            widths=batch[B.WIDTH].copy(),
            heights=batch[B.HEIGHT].copy(),
            ran=np.zeros(count, bool),
            record={field.name: field.empty(count) for field in WORKER_FIELDS},
        )

    def fail(self, rows, message: str) -> None:
        self.status[rows] = B.FAILED
        self.errors[rows] = message


class StageWorker:
    """Runs one stage of the chain on batches of canonical columns (pipeline/batch.py).

    stage: the stage's declaration (or its fields as a dict); index: its place in the
    chain; overrides: the per-row parameters this stage applies from the batch's override
    columns. pipe: a diffusers pipeline already loaded (by a test, or a Serve replica that
    holds one); without it, the stage's model is resolved and loaded once, here.
    max_output_pixels: rows whose image would be larger fail before the pipeline runs.
    attempts, max_deaths: a ChunkAttempts actor (stages/attempts.py); a chunk on which this
    many workers died fails its rows instead of killing another.
    """

    def __init__(
        self,
        stage,
        index: int = 0,
        overrides: Sequence[str] = (),
        storage_options: dict[str, Any] | None = None,
        torch_threads: int | None = None,
        pipe: Any = None,
        revision: str | None = None,
        max_output_pixels: int | None = None,
        attempts: Any = None,
        max_deaths: int = 3,
    ):
        import torch

        from pipeline.stages import parse_stage

        # 1. The declaration, and the per-row parameters this kind can honour.
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.spec = parse_stage(stage)
        self.kind = self.spec.kind
        self.index = index
        unknown = sorted(set(overrides) - set(self.spec.row_params()))
        if unknown:
            raise ValueError(f"stages.{index} ({self.kind}) takes no per-row {', '.join(unknown)}")
        self.overrides = tuple(overrides)
        self.max_output_pixels = max_output_pixels
        self.attempts, self.max_deaths = attempts, max_deaths

        # 2. The pipeline: the one handed in, or the model loaded once per actor. Ray pins
        # the actor to its GPUs through CUDA_VISIBLE_DEVICES, so "cuda" is its own GPU.
        if pipe is None:
            from pipeline.models import load_pipeline, resolve_model

            self.device = "cuda" if torch.cuda.is_available() else "cpu"
            model = resolve_model(self.spec.model, self.spec.revision, storage_options, self.spec.allow_pickle)
            pipe = load_pipeline(
                self.kind, model, self.spec.dtype, self.device, self.spec.scheduler, self.spec.allow_pickle,
                controlnet=getattr(self.spec, "controlnet", None),
            )
            revision = model.revision
        else:
            self.device = pipe.device.type
        self.pipe = pipe
        self.revision = revision

        # 3. The model's family: the one the stage names (which must fit the model), else the
        # one its pipeline class tells. Preflight checked the same before any GPU was held;
        # Serve replicas and uncached hub models are checked here, on load.
        try:
            self.family = resolve_family(self.spec.family, type(pipe).__name__, self.spec.model)
        except ValueError as error:
            raise ValueError(f"stages.{index}.{'family' if self.spec.family else 'model'}: {error}") from None
        problem = self.family.refusal(self.kind, self.spec.model_dump())
        if problem:
            raise ValueError(f"stages.{index}.{problem[0]}: {problem[1]}")

        # 4. LoRA adapters, loaded (and fused, unless rows pick among them) once.
        from pipeline.lora import Adapters

        self.adapters = Adapters(pipe, self.spec.loras, storage_options, self.spec.fuse_loras)
        self.device_label = _device_label(self.device)
        self.timer = PartTimer(self.pipe, self.device)

    # ------------------------------------------------------------ subclass hooks

    def arguments(self, group: Group) -> dict[str, Any]:
        """This kind's pipeline arguments for one group, as Stable Diffusion names them
        (prompt, negative_prompt, num_inference_steps, guidance_scale, generator, ...);
        the model's family adapts them (pipeline/families.py)."""
        raise NotImplementedError

    def call_arguments(self, group: Group) -> dict[str, Any]:
        """The arguments the pipeline is called with for this group."""
        call = self.arguments(group)
        if group.controls is not None:
            call.update(control=group.controls, controlnet_conditioning_scale=group.control_scale)
        return {**self.family.arguments(self.kind, call, self.output_size(group)), "output_type": "pt"}

    def generate(self, group: Group):
        """Run the diffusers pipeline on one group with output_type="pt"; return its output
        (`.images`: a (n, 3, H, W) tensor in [0, 1])."""
        self.adapters.use(group.lora)
        return self.pipe(**self.call_arguments(group))

    def row_error(self, batch: dict[str, np.ndarray], row: int) -> str | None:
        """A reason this row cannot run in this stage, or None."""
        if self.spec.needs_image and not batch[B.WIDTH][row]:
            return f"stages.{self.index} ({self.kind}): the row has no input image"
        problem = self.adapters.row_error(self._pick(batch, row))
        if problem:
            return f"stages.{self.index} ({self.kind}): lora: {problem}"
        if getattr(self.spec, "controlnet", None) and not batch[B.CONTROL_WIDTH][row]:
            return f"stages.{self.index} ({self.kind}): the row has no control image"
        return None

    def _pick(self, batch: dict[str, np.ndarray], row: int) -> str:
        """The adapter this row picks ("" for the stage's set, and where the stage has none)."""
        return str(batch[B.LORA][row]) if self.spec.loras and B.LORA in batch else ""

    def output_size(self, group: Group) -> tuple[int, int]:
        """The size this group's images will have (0 for a side the model decides and does
        not say): the resized input's, else the stage's or the row's width and height."""
        if group.images:
            return group.images[0].size
        if group.controls:
            return group.controls[0].size
        default = self._default_side()
        width, height = group.width or default, group.height or default
        rounded = self.family.output_side
        return (rounded(width) if rounded and width else width), (rounded(height) if rounded and height else height)

    def _default_side(self) -> int:
        """The side the pipeline generates at when given none (0 where it does not say):
        its call's default (Würstchen's 1024), else its default latent size (Flux, SD3,
        PixArt) or its denoiser's, times the VAE's scale."""
        import inspect

        try:
            parameter = inspect.signature(self.pipe.__call__).parameters.get("height")
        except (TypeError, ValueError):
            parameter = None
        if parameter is not None and isinstance(parameter.default, int):
            return parameter.default
        sample = getattr(self.pipe, "default_sample_size", None)
        if not isinstance(sample, int):
            denoiser = getattr(self.pipe, "unet", None) or getattr(self.pipe, "transformer", None)
            sample = getattr(getattr(denoiser, "config", None), "sample_size", None)
        return sample * getattr(self.pipe, "vae_scale_factor", 8) if isinstance(sample, int) else 0

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

    def required_columns(self) -> list[str]:
        """The canonical columns this stage reads (pipeline/batch.py)."""
        columns = [B.ID, B.PROMPT, B.NEGATIVE_PROMPT, B.SEED, B.STATUS, B.ERROR, B.IMAGE, B.WIDTH, B.HEIGHT]
        if self.spec.needs_mask:
            columns += [B.MASK, B.MASK_WIDTH, B.MASK_HEIGHT, B.SOURCE_WIDTH, B.SOURCE_HEIGHT]
        if self.spec.loras and not self.adapters.fused:
            columns.append(B.LORA)
        if getattr(self.spec, "controlnet", None):
            columns += [B.CONTROL, B.CONTROL_WIDTH, B.CONTROL_HEIGHT]
        return columns + [B.override_column(param) for param in self.overrides]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # 1. The batch must carry what this stage reads.
        missing = [column for column in self.required_columns() if column not in batch]
        if missing:
            raise MissingColumns(
                f"stages.{self.index} ({self.kind}): the batch lacks the column(s) {', '.join(missing)}; "
                "build batches with pipeline.io.prepare.canonical_batch"
            )
        queue_seconds = B.queued(batch)
        outcome = Outcome.start(batch)
        chunk, deaths = self._begin(batch)
        try:
            # 2. Rows this stage can run: not failed upstream, and valid for this kind; none
            # when workers kept dying on this chunk.
            runnable = self._runnable(batch, outcome, deaths)

            # 3. One pipeline call per group of rows with equal parameters and input size.
            params = self._row_params(batch)
            runnable = self._honoured(batch, runnable, params, outcome)
            truncated = self._truncated(batch, runnable)
            for group in self._groups(batch, runnable, params):
                self._record(batch, group, outcome, truncated)
                self._run(group, outcome)
        finally:  # a raised error is no death; a killed process never gets here
            self._end(chunk)

        # 4. The batch out: the images made, the rows failed, this stage's record.
        return self._assemble(batch, outcome, queue_seconds)

    def _begin(self, batch: dict[str, np.ndarray]) -> tuple[str | None, int]:
        """This chunk's key, and how many workers died running it so far (0 outside a run)."""
        if self.attempts is None or not len(batch[B.ID]):
            return None, 0
        import ray

        chunk = f"s{self.index}-{batch_name([str(row_id) for row_id in batch[B.ID]])}"
        try:
            return chunk, ray.get(self.attempts.begin.remote(chunk), timeout=60)
        except Exception as error:  # the counter is a guard, not a reason to fail the chunk
            logger.warning("stages.%d: the chunk attempt counter did not answer (%s); running the chunk",
                           self.index, type(error).__name__)
            return None, 0

    def _end(self, chunk: str | None) -> None:
        if chunk is not None:
            self.attempts.end.remote(chunk)

    def _runnable(self, batch: dict[str, np.ndarray], outcome: Outcome, deaths: int = 0) -> list[int]:
        if deaths >= self.max_deaths:
            rows = [row for row in range(len(batch[B.ID])) if outcome.status[row] == B.OK]
            ids = [str(batch[B.ID][row]) for row in rows]
            listed = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            outcome.fail(rows, (
                f"stages.{self.index} ({self.kind}): the worker died {deaths} times while running this chunk of "
                f"{len(ids)} rows ({listed}); rerun with --retry-failed, if need be with a smaller "
                f"stages.{self.index}.batch_size"
            ))
            return []
        runnable = []
        for row in range(len(batch[B.ID])):
            if outcome.status[row] != B.OK:
                continue
            reason = self.row_error(batch, row)
            if reason:
                outcome.fail(row, reason)
            else:
                runnable.append(row)
        return runnable

    def _honoured(self, batch: dict[str, np.ndarray], rows: list[int], params: dict[str, np.ndarray],
                  outcome: Outcome) -> list[int]:
        """The rows whose values the model's family would use; the others fail, naming the
        field (a row's negative prompt with a guidance_scale that drops it)."""
        kept = []
        for row in rows:
            values = {"negative_prompt": batch[B.NEGATIVE_PROMPT][row] or self.spec.negative_prompt,
                      "guidance_scale": float(params["guidance_scale"][row])}
            refused = self.family.refusal(self.kind, values)
            if refused:
                outcome.fail(row, f"stages.{self.index} ({self.kind}): {refused[0]}: {refused[1]}")
            else:
                kept.append(row)
        return kept

    def _truncated(self, batch: dict[str, np.ndarray], rows: list[int]) -> set[int]:
        """Rows whose prompt is longer than the text encoder takes (diffusers truncates it)."""
        tokenizer = getattr(self.pipe, "tokenizer", None)
        if tokenizer is None or not rows:
            return set()
        lengths = [len(ids) for ids in tokenizer([str(batch[B.PROMPT][r]) for r in rows])["input_ids"]]
        return {row for row, length in zip(rows, lengths) if length > tokenizer.model_max_length}

    def _row_params(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each row's generation parameters: the stage's, or the row's override. NaN where
        this kind has no such parameter, 0 for a side left to the model or the input."""
        count = len(batch[B.ID])
        values = {}
        for param in ROW_PARAMS:
            value = getattr(self.spec, param, None)
            if value is None and param == "controlnet_conditioning_scale" and getattr(self.spec, "controlnet", None):
                value = 1.0  # passed explicitly: diffusers' default differs by pipeline (0.8 for img2img, 0.5 for inpaint)
            if value is None:  # a side left to the model or the input: 0; a parameter this kind lacks: NaN
                value = 0 if param in ("width", "height") else np.nan
            values[param] = np.full(count, value, np.float64)
        for param in self.overrides:
            column = batch[B.override_column(param)]
            values[param] = np.where(np.isnan(column), values[param], column)
        return values

    def _groups(self, batch: dict[str, np.ndarray], rows: list[int], params: dict[str, np.ndarray]):
        import torch

        keyed: dict[tuple, list[int]] = {}
        # NaN (strength of kinds without one) becomes -1: NaN != NaN would split every row
        # into a group of its own.
        columns = [np.nan_to_num(params[name], nan=-1.0) for name in ROW_PARAMS]
        for row in rows:
            key = tuple(float(column[row]) for column in columns)
            # With and without a negative prompt apart: one call passes either every row's
            # negative or none, and "no negative" means a model's own unconditional input
            # (SDXL's zeros, Kandinsky's zero embedding), not an encoded "" that would make a
            # row's image depend on what its batch mates asked.
            negative = bool(batch[B.NEGATIVE_PROMPT][row] or self.spec.negative_prompt)
            key += (int(batch[B.WIDTH][row]), int(batch[B.HEIGHT][row]), *self._control_size(batch, row), negative,
                    self._pick(batch, row))
            keyed.setdefault(key, []).append(row)
        size = self.spec.batch_size
        # Groups of at most batch_size rows, in row order: fixed for a given chunk.
        sliced = [(key, members[i : i + size]) for key, members in keyed.items() for i in range(0, len(members), size)]
        for key, members in sliced:
            value = dict(zip(ROW_PARAMS, key))
            steps, guidance, strength = value["steps"], value["guidance_scale"], value["strength"]
            width, height = value["width"], value["height"]
            controlled = bool(getattr(self.spec, "controlnet", None))
            negatives = [batch[B.NEGATIVE_PROMPT][r] or self.spec.negative_prompt for r in members]
            yield Group(
                rows=members,
                prompts=[str(batch[B.PROMPT][r]) for r in members],
                negative_prompts=negatives if all(negatives) else None,
                # CPU generators: the same seed gives the same latents on any device.
                generators=[
                    torch.Generator("cpu").manual_seed(stage_seed(int(batch[B.SEED][r]), self.index)) for r in members
                ],
                steps=int(steps),
                guidance_scale=guidance,
                strength=strength if strength >= 0 else float("nan"),
                width=int(width),
                height=int(height),
                images=self._inputs(batch, members, int(width), int(height)) if self.spec.needs_image else None,
                masks=self._inputs(batch, members, int(width), int(height), mask=True) if self.spec.needs_mask else None,
                lora=key[-1],
                controls=self._controls(batch, members, int(width), int(height)) if controlled else None,
                control_scale=value["controlnet_conditioning_scale"],
            )

    def _control_size(self, batch: dict[str, np.ndarray], row: int) -> tuple[int, int]:
        """The control image's own size where it sets the output's (txt2img); else (0, 0)."""
        if not getattr(self.spec, "controlnet", None) or self.spec.needs_image:
            return 0, 0
        return int(batch[B.CONTROL_WIDTH][row]), int(batch[B.CONTROL_HEIGHT][row])

    def _controls(self, batch, rows: list[int], width: int, height: int) -> list[Any]:
        """The rows' control images (RGB, Lanczos) at the size the call generates at: the
        input image's, resized as it is, or else width x height (or the control image's own,
        to a multiple of 8, for a side not set)."""
        from PIL import Image

        controls = []
        for r in rows:
            item = Image.fromarray(B.image_view(batch[B.CONTROL][r], batch[B.CONTROL_WIDTH][r], batch[B.CONTROL_HEIGHT][r]))
            own = (int(batch[B.WIDTH][r]), int(batch[B.HEIGHT][r])) if self.spec.needs_image else item.size
            size = _target_size(own, width, height)
            controls.append(item.resize(size, Image.LANCZOS) if item.size != size else item)
        return controls

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

    def _record(self, batch: dict[str, np.ndarray], group: Group, outcome: Outcome, truncated: set[int]) -> None:
        """What the stage runs these rows with, recorded before it runs them."""
        rows, record = group.rows, outcome.record
        outcome.ran[rows] = True
        record["seed"][rows] = [stage_seed(int(batch[B.SEED][r]), self.index) for r in rows]
        record["steps"][rows] = group.steps
        record["guidance_scale"][rows] = group.guidance_scale
        record["strength"][rows] = group.strength
        record["prompt_truncated"][rows] = [r in truncated for r in rows]
        settings = {name: value for name, value in self.call_arguments(group).items() if name not in ROW_ARGUMENTS}
        if self.spec.loras:
            settings["loras"] = self.adapters.weights(group.lora)
        record["arguments"][rows] = json.dumps(settings, sort_keys=True)

    def _run(self, group: Group, outcome: Outcome) -> None:
        """Generate one group; write its images into the outcome, or fail its rows."""
        rows = group.rows
        problem = self.spec.denoising_error(group.steps, group.strength)
        if problem:
            outcome.fail(rows, f"stages.{self.index} ({self.kind}): {problem}; raise steps or strength")
            return
        width, height = self.output_size(group)
        if self.max_output_pixels and width * height > self.max_output_pixels:
            outcome.fail(rows, (
                f"stages.{self.index} ({self.kind}): {width}x{height} = {width * height} pixels is over "
                f"output.max_pixels ({self.max_output_pixels}); lower the row's width and height, or the input's size"
            ))
            return
        self.timer.take()
        started = time.perf_counter()
        try:
            output, pixels, bad = self._generate_pixels(group)
        except GroupFailed as failure:
            outcome.fail(rows, str(failure))
            return
        seconds = (time.perf_counter() - started) / len(rows)
        parts = self.timer.take()
        record = outcome.record
        record["text_encode_seconds"][rows] = parts.get("text_encode", 0.0) / len(rows)
        record["vae_seconds"][rows] = parts.get("vae", 0.0) / len(rows)
        flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(rows)
        for position, row in enumerate(rows):
            record["seconds"][row] = seconds
            record["nsfw"][row] = bool(flagged[position])
            if bad[position]:
                outcome.fail(row, f"stages.{self.index} ({self.kind}): the model produced NaN pixels")
                continue
            outcome.images[row] = pixels[position].tobytes()
            outcome.heights[row], outcome.widths[row] = pixels.shape[1], pixels.shape[2]
            record["height"][row], record["width"][row] = pixels.shape[1], pixels.shape[2]

    def _generate_pixels(self, group: Group):
        """(pipeline output, uint8 (n, H, W, 3) pixels, NaN flag per image); GroupFailed
        when these rows cannot run (the pipeline refused them, or memory ran out)."""
        import torch

        try:
            with torch.inference_mode():
                output = self.generate(group)
                pixels = output.images
                if self.family.signed_pt_output:  # as diffusers' own np/pil path does
                    pixels = (pixels * 0.5 + 0.5).clamp(0, 1)
                # NaN check and float -> uint8 on the device, before the copy to the host.
                bad = torch.isnan(pixels).flatten(1).any(dim=1).cpu().numpy()
                pixels = (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            return output, pixels, bad
        except ValueError as error:  # diffusers refusing these inputs: these rows only
            message = f"stages.{self.index} ({self.kind}): the pipeline refused the input: {error}"
        except RuntimeError as error:
            # Out of memory fails this group's rows, not the job: raised, it would end the
            # job, and every rerun would stop at the same chunk. Other errors are bugs or
            # broken devices and still end it.
            if not _out_of_memory(error):
                raise
            message = (
                f"stages.{self.index} ({self.kind}): out of {self.device} memory for {len(group.rows)} images "
                f"at {self.size_label(group)}; run with {self.smaller_fields()} into a new output.path: "
                f"{str(error).splitlines()[0][:200]}"
            )
        if self.device == "cuda":
            torch.cuda.empty_cache()  # the failed call's blocks, freed once its frames are gone
        raise GroupFailed(message)

    def _assemble(self, batch: dict[str, np.ndarray], outcome: Outcome, queue_seconds: np.ndarray):
        count = len(batch[B.ID])
        outcome.record["device"][:] = self.device_label
        outcome.record["family"][:] = self.family.name
        outcome.record["model_revision"][:] = self.revision
        result = dict(batch)
        result.update({B.IMAGE: outcome.images, B.WIDTH: outcome.widths, B.HEIGHT: outcome.heights,
                       B.STATUS: outcome.status, B.ERROR: outcome.errors})
        result[B.stage_column(self.index, "ran")] = outcome.ran
        for field, values in outcome.record.items():
            result[B.stage_column(self.index, field)] = values
        result[B.QUEUE_SECONDS], result[B.HANDOFF_AT] = queue_seconds, B.handed_off(count)
        return result


class GroupFailed(Exception):
    """The rows of one group cannot run; the message says why (it becomes their error)."""
