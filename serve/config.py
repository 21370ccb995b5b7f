"""The endpoint's configuration: which models it serves (each with its stages, declared as in
a job spec), how their replicas scale, the request limits, API keys and url storage.

`synth serve` with no file serves DEFAULT (the built-in shapes model). Nothing here imports
torch, diffusers or Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from pipeline.spec import _check_no_credentials, read_document, validate_document
from pipeline.stages import StageSpec
from pipeline.strict import FieldError, Strict

# Stage fields that shape the batch job's actor pools; a replica's resources are the model's.
_POOL_FIELDS = ("replicas", "gpus", "cpus")


class Autoscaling(Strict):
    min_replicas: int = Field(1, ge=0, description="Replicas kept up when idle (0 scales to zero; the first "
                              "request then waits for a model load).")
    max_replicas: int = Field(1, ge=1, description="Most replicas under load.")
    target_ongoing_requests: float = Field(
        4, gt=0, description="Requests in flight per replica that the autoscaler aims for; lower adds replicas "
        "sooner (lower latency, more GPUs).")
    # Ray Serve's own reaction times, passed through: defaults are Serve's.
    upscale_delay_s: float = Field(30, ge=0, description="How long load must stay above target before a "
                                   "replica is added.")
    downscale_delay_s: float = Field(600, ge=0, description="How long load must stay below target before a "
                                     "replica is removed (each holds a loaded model: keep this long).")
    look_back_period_s: float = Field(30, gt=0, description="The window the load is averaged over.")
    metrics_interval_s: float = Field(10, gt=0, description="How often replicas and callers report their "
                                      "load to Serve's controller.")

    @model_validator(mode="after")
    def _ordered(self) -> "Autoscaling":
        if self.max_replicas < self.min_replicas:
            raise FieldError("max_replicas", f"{self.max_replicas} is below min_replicas ({self.min_replicas})")
        return self


class ModelConfig(Strict):
    """One served model: one Serve deployment whose replicas hold its stages' pipelines."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9:._/-]{0,127}$",
                      description="The OpenAI `model` value that selects it, e.g. synth:shapes.")
    stages: list[StageSpec] = Field(
        min_length=1,
        description="Its stage declarations, as in a job spec's stages[] (one per kind): their fields are the "
        "request defaults and bounds. Kinds that share a model folder share its weights in a replica.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    gpus: float = Field(0, ge=0, description="GPUs per replica (fractions share a GPU).")
    cpus: float = Field(1, gt=0, description="CPUs per replica; torch uses as many threads (at least 1).")
    max_batch_size: int = Field(
        8, ge=1, description="Most requests gathered into one call (@serve.batch); their images are then run "
        "in pipeline calls of the stage's batch_size. Larger: more throughput, more latency per request.")
    batch_wait_timeout_s: float = Field(
        0.05, ge=0, description="How long a call waits for more requests to batch with; adds up to this much "
        "latency at low load.")
    max_ongoing_requests: int = Field(
        16, ge=1, description="Requests a replica holds at once (running and waiting to be batched); at least "
        "max_batch_size.")
    max_queued_requests: int = Field(
        32, ge=-1, description="Requests waiting for a replica; past it the caller gets 503 with Retry-After. "
        "-1: no limit (memory then grows with the load).")

    @model_validator(mode="after")
    def _check(self) -> "ModelConfig":
        kinds = [stage.kind for stage in self.stages]
        for index, stage in enumerate(self.stages):
            if kinds.index(stage.kind) != index:
                raise FieldError(f"stages.{index}.kind", f"{stage.kind} appears twice; a model serves each kind once")
            for name in _POOL_FIELDS:
                if name in stage.model_fields_set:
                    raise FieldError(f"stages.{index}.{name}", "set the replica's resources on the model "
                                     "(autoscaling, gpus, cpus): one replica serves all its stages")
        if self.max_ongoing_requests < self.max_batch_size:
            raise FieldError("max_ongoing_requests",
                             f"{self.max_ongoing_requests} is below max_batch_size ({self.max_batch_size}): "
                             "batches could never fill")
        return self

    def kinds(self) -> list[str]:
        return [stage.kind for stage in self.stages]

    def stage(self, kind: str):
        return next((stage for stage in self.stages if stage.kind == kind), None)


class Limits(Strict):
    max_pixels: int = Field(4096 * 4096, ge=64, description="The largest image a request may generate or upload "
                            "(width x height; an upscale counts its 4x output). Memory grows with it.")
    max_n: int = Field(10, ge=1, le=128, description="Most images per request (OpenAI allows 1-10).")
    max_prompt_chars: int = Field(4000, ge=1, description="Longest prompt or negative prompt, in characters.")
    max_request_bytes: int = Field(32 * 2**20, ge=1024, description="Largest request body (uploads included); "
                                   "larger ones get 413 before they are read whole.")


class Ingress(Strict):
    """The HTTP-facing deployment (FastAPI): validation, auth, encoding to JSON; no model."""

    replicas: int = Field(1, ge=1)
    cpus: float = Field(0.25, gt=0)
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one ingress replica holds at once.")
    max_queued_requests: int = Field(128, ge=-1, description="Requests waiting at the proxy; past it 503.")


class UrlStorage(Strict):
    path: str = Field(description="A local folder or an s3:// prefix where `url` responses' images are written.")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="s3fs options (no credentials).")
    expires_s: int = Field(3600, ge=1, le=7 * 86400, description="Lifetime of an s3 presigned URL.")
    public_url: str | None = Field(
        None, description="For a local folder: the endpoint's base URL as clients reach it (default: the "
        "request's own host).")

    @model_validator(mode="after")
    def _no_credentials(self) -> "UrlStorage":
        _check_no_credentials(self.storage_options)
        return self


class ServeConfig(Strict):
    host: str = Field("127.0.0.1", description="Where `synth serve` listens; 0.0.0.0 exposes it.")
    port: int = Field(8000, ge=0, le=65535)
    models: list[ModelConfig] = Field(min_length=1)
    ingress: Ingress = Field(default_factory=Ingress)
    limits: Limits = Field(default_factory=Limits)
    api_keys_file: str | None = Field(
        None, description="A file with one API key per line; with it (or SYNTH_API_KEYS), /v1 needs a bearer key.")
    url_storage: UrlStorage | None = Field(None, description="Needed for response_format=url.")
    retry_after_s: float = Field(2, ge=0, description="Retry-After sent with 503 when the endpoint is full.")
    request_timeout_s: float | None = Field(
        300, gt=0, description="`synth serve`: a request still unanswered after this long gets 408 from Serve's "
        "proxy (null: no limit). With `serve deploy`, set http_options.request_timeout_s instead.")

    @model_validator(mode="after")
    def _unique(self) -> "ServeConfig":
        names = [model.name for model in self.models]
        for index, name in enumerate(names):
            if names.index(name) != index:
                raise FieldError(f"models.{index}.name", f"{name!r} appears twice")
        return self

    def model(self, name: str | None, kind: str) -> ModelConfig | None:
        """The model a request names, or the first that serves `kind` when it names none."""
        if name is None:
            return next((model for model in self.models if kind in model.kinds()), None)
        return next((model for model in self.models if model.name == name), None)


# The built-in shapes model with the recipe it was trained for (see pipeline/demo.py): 20
# steps, guidance 4, 32 px; its own scheduler is DPM++ 2M (DPMSolverMultistepScheduler).
_SHAPES = {"model": "synth:shapes", "steps": 20, "guidance_scale": 4.0}
DEFAULT = {
    "models": [{
        "name": "synth:shapes",
        "stages": [{"kind": "txt2img", **_SHAPES, "width": 32, "height": 32, "batch_size": 16},
                   {"kind": "img2img", **_SHAPES, "batch_size": 16},
                   {"kind": "inpaint", **_SHAPES, "batch_size": 16}],
        "cpus": 1,
    }],
}


def parse_config(raw: Any, source: str = "serve config") -> ServeConfig:
    return validate_document(ServeConfig, raw, source)


def load_config(path: str | Path | None = None) -> ServeConfig:
    """The config in a YAML or JSON file, or DEFAULT without one."""
    if path is None:
        return parse_config(DEFAULT, "the default serve config")
    return parse_config(read_document(path, "serve config"), str(path))
