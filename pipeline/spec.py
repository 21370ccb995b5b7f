"""The job spec: the one source of truth for the CLI, batch jobs and (later) Serve requests.

A spec is loaded from YAML or JSON, optionally patched with `--set a.b.0.c=value`
overrides, and validated here. Validation errors name the field's dotted path.
Nothing in this module imports torch or diffusers, so `synth validate` is fast.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, create_model, model_validator

from pipeline.io.shards import SHARD_IMAGE_BYTES, chain_pixels, max_shard_rows
from pipeline.params import ROW_PARAMS
from pipeline.stages import STAGES, Replicas, StageSpec
from pipeline.storage import merge_options
from pipeline.strict import FieldError, Strict

ImageFormat = Literal["png", "jpeg", "webp"]
# Re-exported: the spec's parts, for code that builds or documents specs.
__all__ = ["Columns", "FieldError", "InputSpec", "JobSpec", "OutputSpec", "OverrideColumns", "Replicas", "SpecError",
           "StageSpec", "load_spec", "parse_spec", "resolved_dict"]

# storage_options keys that carry secrets. Credentials come from the AWS environment
# variables or the instance profile; a spec file is copied around and written beside
# the outputs, so it must never hold them.
_CREDENTIAL_KEYS = {
    "key",
    "secret",
    "token",
    "password",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "session_token",
    # server-side encryption with a customer key (s3fs passes it through s3_additional_kwargs)
    "ssecustomerkey",
    "sse_customer_key",
}


class SpecError(ValueError):
    """A job spec that cannot be loaded or validated; the message names the field."""


def _check_no_credentials(options: dict[str, Any] | None) -> dict[str, Any] | None:
    if not options:
        return options

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                if str(key).lower() in _CREDENTIAL_KEYS:
                    raise FieldError(
                        f"storage_options.{path}{key}",
                        "looks like a credential; credentials come from the AWS environment "
                        "variables or the instance profile, never from the spec file",
                    )
                walk(inner, f"{path}{key}.")

    walk(options, "")
    return options


class Columns(Strict):
    """Which input column plays which role. A role whose column is absent is simply unused,
    unless a stage needs it (checked against the table before any GPU is held)."""

    prompt: str = Field("prompt", description="Column with the text prompt.")
    negative_prompt: str = Field(
        "negative_prompt",
        description="Column with a per-row negative prompt; overrides the stage's negative_prompt.",
    )
    image: str = Field(
        "image",
        description="Column with the input image: encoded bytes, or a URI (s3://..., file://, or a path; "
        "relative paths resolve against the input table's folder; http(s):// with input.allow_http). "
        "Needed when the first stage is img2img, inpaint or upscale.",
    )
    mask: str = Field(
        "mask",
        description="Column with the inpainting mask (white = regenerate), bytes or URI. Needed by inpaint.",
    )
    control_image: str = Field(
        "control_image",
        description="Column with the ControlNet conditioning image (bytes or URI, read as image is). Needed by "
        "a stage with a controlnet.",
    )
    lora: str = Field(
        "lora",
        description="Column with the name of the LoRA adapter a row runs with, one of each stage's loras "
        "(those stages need fuse_loras: false); empty: the stage's whole set.",
    )


OverrideColumns = create_model(
    "OverrideColumns",
    __base__=Strict,
    __doc__="""Which column overrides each generation parameter per row (its non-null values). null:
    no column does, e.g. for a table whose width and height describe its source images.""",
    seed=(str | None, Field("seed", description="Column with the row's base seed, a whole number in [0, 2**63).")),
    **{
        param: (str | None, Field(param, description=f"Column with the row's {param} (the bounds of stages[].{param})."))
        for param in ROW_PARAMS
    },
)


class InputSpec(Strict):
    path: str = Field(description="A local path, a glob, or an s3:// URI of Parquet files.")
    id_column: str | None = Field(
        None,
        description="Column with a unique row id. Without it, a stable hash of the row's content is the "
        "id (identical rows then share one id and one output).",
    )
    columns: Columns = Field(default_factory=Columns)
    overrides: OverrideColumns = Field(default_factory=OverrideColumns)
    max_image_pixels: int = Field(
        50_000_000,
        ge=64,
        description="Images and masks with more pixels are refused (the row fails) from their header, "
        "before decoding: a guard against decompression bombs.",
    )
    max_image_bytes: int | None = Field(
        None,
        ge=1,
        description="Images and masks with more bytes fail their row: a fetch reads at most this many (plus "
        "one) from a file, an S3 object or an HTTP answer, so no cell can make a read unbounded. "
        "null: 8 bytes a pixel of max_image_pixels plus 1 MiB (about 400 MB by default); lower it to "
        "bound a worker's memory more tightly.",
    )
    allow_http: bool = Field(
        False,
        description="Fetch http:// and https:// image and mask cells. Off by default: with it on, a table "
        "can make the workers send GET requests to any address they reach, internal ones included.",
    )
    http_timeout_s: float = Field(
        30,
        gt=0,
        description="Seconds an http(s) fetch may take in all (connect, redirects, body); past it the row "
        "fails.",
    )
    storage_options: dict[str, Any] | None = Field(
        None, description="s3fs options for the input only; override the top-level storage_options."
    )

    @model_validator(mode="after")
    def _no_credentials(self) -> "InputSpec":
        _check_no_credentials(self.storage_options)
        return self


class OutputSpec(Strict):
    path: str = Field(description="Local folder or s3:// prefix; images/ and metadata/ are written under it.")
    format: ImageFormat = Field("png", description="Image encoding: png (lossless), jpeg or webp (lossy, smaller).")
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality; higher is larger and sharper.")
    png_compress_level: int = Field(
        6, ge=0, le=9, description="PNG zlib level: 1 encodes about 1.5x faster than 6 for slightly larger files."
    )
    max_pixels: int = Field(
        4096 * 4096,
        ge=64,
        description="The largest image a stage may generate, in pixels (width x height): a stage's size over it "
        "is refused before the job starts, and a row whose override or input would exceed it fails alone, "
        "before the pipeline runs. Memory grows with it; the default fits the largest models' sizes.",
    )
    storage_options: dict[str, Any] | None = Field(
        None, description="s3fs options for the output only; override the top-level storage_options."
    )
    layout: Literal["files", "webdataset", "parquet"] = Field(
        "files",
        description="How images are stored: files (one object per image under images/), webdataset (one tar of "
        "<key>.<ext> + <key>.json per shard under shards/, as the webdataset package and ray.data.read_webdataset "
        "read), or parquet (one Parquet file per shard under data/, images in an `image` column as Hugging Face "
        "datasets' Image feature). The sharded layouts write a few objects per shard instead of one per image.",
    )
    shard_rows: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="Rows per shard, the unit of work and of commit: a shard's rows are generated by one "
        "worker (which cuts its stages' batches from it) and committed together. Default: 1024, fewer for "
        "large images (a shard's images stay within 512 MiB) and for small tables (at least 16 shards, so "
        "every actor gets work, but at least one batch each); a value whose images would pass 512 MiB is "
        "refused. An output keeps the shard size of its first "
        "run: a resume with another output.shard_rows is refused.",
    )
    lease_timeout_s: float = Field(
        300,
        gt=0,
        description="A run holds a lease on the output while it writes; a lease not renewed for this long "
        "(its run was killed) is taken over by the next run. Longer rides out a paused driver or a storage "
        "outage; shorter frees the output of a killed run sooner. Hosts' clocks must agree to well within it.",
    )
    lease_renew_s: float = Field(
        30, gt=0, description="How often the running driver renews its lease; at most half of lease_timeout_s."
    )

    @model_validator(mode="after")
    def _no_credentials(self) -> "OutputSpec":
        _check_no_credentials(self.storage_options)
        if self.lease_renew_s * 2 > self.lease_timeout_s:
            raise FieldError(
                "lease_renew_s",
                f"{self.lease_renew_s:g} is more than half of lease_timeout_s ({self.lease_timeout_s:g}): one late "
                "renewal would let another run take the lease over",
            )
        return self


class JobSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Job name, used in logs.")
    seed: int = Field(0, ge=0, lt=2**63, description="Base seed; each row's seed derives from it and the row id.")
    input: InputSpec
    stages: list[StageSpec] = Field(min_length=1)
    output: OutputSpec
    max_failed_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of rows that may fail (bad image, NaN output...) with the job still exiting 0.",
    )
    actor_start_timeout_s: float = Field(
        1800,
        gt=0,
        description="Seconds the job may go without any progress before it fails instead of waiting forever: "
        "stage actors waiting for GPUs or CPUs that never free, a model load that hangs, or a later stall. "
        "Raise it when loading a model or one batch legitimately takes longer.",
    )
    max_worker_deaths: int = Field(
        3,
        ge=1,
        description="A chunk whose stage worker died this many times while running it (the process killed "
        "outright, e.g. by the kernel for memory) has its rows committed as failed, naming them, and the job "
        "goes on; --retry-failed runs them again later. Each death costs an actor restart and a model load.",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="s3fs options for every s3:// path of the job (input, models, output), e.g. "
        "{client_kwargs: {endpoint_url: ...}} or {anon: true}.",
    )

    @model_validator(mode="after")
    def _chain(self) -> "JobSpec":
        _check_no_credentials(self.storage_options)
        for index, stage in enumerate(self.stages):
            width, height = getattr(stage, "width", None), getattr(stage, "height", None)
            if width and height and width * height > self.output.max_pixels:
                raise FieldError(
                    f"stages.{index}.width",
                    f"{width}x{height} = {width * height} pixels is over output.max_pixels ({self.output.max_pixels})",
                )
        limit = max_shard_rows(self.stages)
        if self.output.shard_rows and self.output.shard_rows > limit:
            pixels = chain_pixels(self.stages)
            largest = max(range(len(self.stages)), key=lambda index: pixels[index])
            raise FieldError(
                "output.shard_rows",
                f"{self.output.shard_rows} rows of stages.{largest}'s images (about {pixels[largest]:,} pixels each, "
                f"3 bytes a pixel; 1024x1024 where the size is left to the model or the input, 16x its input's for "
                f"an upscale) would hold over {SHARD_IMAGE_BYTES // 2**20} MiB in one shard, which travels as one "
                f"Ray object between stages: the largest allowed is {limit}. Lower it, or leave it out for the default",
            )
        for index, stage in enumerate(self.stages[1:], start=1):
            if not stage.needs_image:
                raise FieldError(
                    f"stages.{index}.kind",
                    f"{stage.kind} can only be the first stage (it would discard the image made before it); "
                    "use img2img to refine an image",
                )
        return self

    def input_storage_options(self) -> dict[str, Any]:
        return merge_options(self.storage_options, self.input.storage_options or {})

    def output_storage_options(self) -> dict[str, Any]:
        return merge_options(self.storage_options, self.output.storage_options or {})

    def required_roles(self) -> dict[str, str]:
        """Input roles the stage chain needs from the table, each with the reason (for error
        messages): the first stage's image, and every mask."""
        first = self.stages[0]
        needs: dict[str, str] = {}
        if first.needs_image:
            needs["image"] = f"stages.0 ({first.kind}) reads its input image from the table"
        for index, stage in enumerate(self.stages):
            if stage.needs_mask:
                needs.setdefault("mask", f"stages.{index} ({stage.kind}) needs a mask")
            if getattr(stage, "controlnet", None):
                needs.setdefault("control_image", f"stages.{index} ({stage.kind}) conditions its controlnet on it")
        return needs


# ---------------------------------------------------------------- loading


def format_validation_error(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        # A stage's errors sit below its kind's tag (stages.0.txt2img.width): name the field
        # as the spec file does (stages.0.width).
        parts = [str(part) for i, part in enumerate(item["loc"])
                 if not (part in STAGES and i and isinstance(item["loc"][i - 1], int))]
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            parts.append("kind")
            message = ("Field required" if item["type"] == "union_tag_not_found"
                       else f"Input should be one of {', '.join(STAGES)}, got {item['ctx']['tag']!r}")
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            parts.append(cause.path)
        path = ".".join(parts) or "(top level)"
        lines.append(f"{path}: {message}")
    return "\n".join(lines)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.path=value` overrides; values are parsed as YAML (so 2 is an int)."""
    for override in overrides:
        path, sep, text = override.partition("=")
        if not sep or not path:
            raise SpecError(f"--set {override!r}: expected PATH=VALUE, e.g. stages.0.steps=2")
        value = _override_value(path, text)
        parts = path.split(".")
        node: Any = raw
        for depth, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: depth + 1]), create=True)
        last = parts[-1]
        if isinstance(node, list):
            index = _index(node, last, path)
            node[index] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"--set {path}: {'.'.join(parts[:-1])} is not a mapping or a list")
    return raw


def _override_value(path: str, text: str) -> Any:
    """A --set value parsed as YAML, refusing what YAML would read otherwise than meant."""
    import yaml

    try:
        value = yaml.safe_load(text)
        # The scanner skips comments: text left after the last token is one YAML ignored.
        tokens = [token for token in yaml.scan(text) if token.end_mark.index > token.start_mark.index]
    except yaml.YAMLError as error:
        problem = str(error).splitlines()[0]
        raise SpecError(f"--set {path}: {text!r} is not a valid YAML value ({problem}); quote it as a YAML string") from None
    end = max((token.end_mark.index for token in tokens), default=0)
    if text[end:].strip():
        raise SpecError(
            f"--set {path}: YAML reads {text[end:].strip()!r} in {text!r} as a comment and drops it; "
            "quote the value as a YAML string"
        )
    return value


def _index(node: list, part: str, path: str) -> int:
    if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
        raise SpecError(f"--set {path}: no item {part!r} (the list has {len(node)} items)")
    return int(part)


def _child(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            if not create:
                raise SpecError(f"--set {path}: no such field")
            node[part] = {}
        return node[part]
    raise SpecError(f"--set {path}: parent is not a mapping or a list")


def parse_spec(raw: Any, source: str = "spec") -> JobSpec:
    return validate_document(JobSpec, raw, source)


def validate_document(model: type[Strict], raw: Any, source: str):
    """A document (job spec, serve config) validated as `model`; SpecError naming each field."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise SpecError(f"{source} is invalid:\n{format_validation_error(error)}") from None


def _strict_loader():
    """A safe YAML loader that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently, so a duplicated `steps:` would hide a typo)."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` merges a mapping; its keys may be overridden here
                key = self.construct_object(key_node, deep=deep)
                try:
                    hash(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error names it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key!r} appears twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def load_spec(path: str | Path, overrides: list[str] | None = None) -> JobSpec:
    """Load a YAML or JSON job spec from a file, apply overrides, validate."""
    raw = read_document(path, "job spec")
    if isinstance(raw, dict) and overrides:
        raw = apply_overrides(raw, overrides)
    return parse_spec(raw, source=str(path))


def read_document(path: str | Path, what: str) -> Any:
    """A YAML or JSON file's data (YAML is a superset of JSON: one loader serves both), with
    no key given twice and no alias bomb; SpecError saying what is wrong with it."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        raw = yaml.load(text, Loader=_strict_loader())
    except yaml.YAMLError as error:
        raise SpecError(f"{path} is not valid YAML or JSON: {error}") from None
    if _expanded_size(raw, {}) > _MAX_SPEC_NODES:
        raise SpecError(f"{path}: its YAML aliases expand to more than {_MAX_SPEC_NODES} values; write it out")
    return raw


# A spec is a few hundred values. YAML aliases share one object among many places, so a small
# file can stand for billions of values (an "alias bomb") that validation would walk.
_MAX_SPEC_NODES = 100_000


def _expanded_size(value: Any, sizes: dict[int, int]) -> int:
    """How many values `value` holds once its aliases are expanded, counting each shared
    object once (memoised by identity), so a bomb is measured without expanding it."""
    if not isinstance(value, (dict, list)):
        return 1
    if id(value) not in sizes:
        sizes[id(value)] = 0  # a recursive alias counts as nothing more
        children = list(value.items()) if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(
            _expanded_size(item, sizes) for child in children
            for item in (child if isinstance(value, dict) else (child,))
        )
    return sizes[id(value)]


def resolved_dict(spec: JobSpec) -> dict[str, Any]:
    """The resolved spec as plain JSON data, as printed by `synth validate` and written beside
    the outputs. It holds no credentials: validation refuses them in storage_options."""
    return json.loads(spec.model_dump_json())
