"""Load a diffusers pipeline from a hub id, a local folder, or an s3:// prefix.

Weights load with `use_safetensors=True`: pickled weights are never unpickled. Remote
models (hub or s3) are fetched without their pickle files in the first place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import storage

# Files a diffusers folder needs: configs, tokenizer files, safetensors weights.
_WANTED_SUFFIXES = (".json", ".txt", ".safetensors", ".model")


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says where we looked."""


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # what the spec said
    path: str  # a local folder holding the diffusers pipeline
    revision: str  # hub commit, or a fingerprint of the files for local and s3 models


def cache_root() -> Path:
    return Path(os.environ.get("SYNTH_CACHE", Path.home() / ".cache" / "synth"))


def _is_hub_id(model: str) -> bool:
    # "org/name" or "name", not a path that exists, not a URI.
    return "://" not in model and not model.startswith((".", "/", "~")) and not Path(model).exists()


def _fingerprint(entries: list[tuple[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def _local_fingerprint(folder: Path) -> str:
    """Names and sizes of every file plus the content of the small config files: cheap even
    for multi-GB weights, and it changes whenever a config or a weight file changes size."""
    entries = []
    for file in sorted(folder.rglob("*")):
        if not file.is_file():
            continue
        rel = file.relative_to(folder).as_posix()
        size = file.stat().st_size
        content = hashlib.sha256(file.read_bytes()).hexdigest() if file.suffix == ".json" else ""
        entries.append((rel, size, content))
    return _fingerprint(entries)


def check_model_source(model: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast (in the driver, before any GPU is held) when a local or s3 model is missing."""
    if model.startswith("s3://"):
        fs, inner = storage.filesystem(model, storage_options)
        if not fs.exists(storage.join(inner, "model_index.json")):
            raise ModelError(f"no diffusers model at {model}: model_index.json not found there")
    elif not _is_hub_id(model):
        folder = Path(model).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelError(f"no diffusers model at {folder}: model_index.json not found there")


def _download_s3(model: str, storage_options: dict[str, Any] | None) -> ResolvedModel:
    """Download an s3:// model once per node into the local cache, then reuse it.

    The cache key includes the objects' ETags, so a changed model is fetched again. Several
    actors on one node may start together: a file lock lets one download while the others
    wait, and the finished folder appears by an atomic rename, never half-written.
    """
    import fcntl

    fs, inner = storage.filesystem(model, storage_options)
    listing = fs.find(inner, detail=True)
    if not listing:
        raise ModelError(f"no files under {model}")
    wanted = {
        path: info
        for path, info in listing.items()
        if path.endswith(_WANTED_SUFFIXES)
    }
    entries = [(path[len(inner) :].lstrip("/"), info.get("size"), info.get("ETag", "")) for path, info in wanted.items()]
    revision = _fingerprint(entries)
    key = hashlib.sha256(model.encode()).hexdigest()[:16] + "-" + revision.split(":")[1]
    target = cache_root() / "models" / key
    if (target / "model_index.json").is_file():
        return ResolvedModel(model, str(target), revision)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model_index.json").is_file():
            staging = Path(f"{target}.partial-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            for path, (rel, _, _) in zip(wanted, entries):
                local = staging / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(local))
            os.replace(staging, target)
    return ResolvedModel(model, str(target), revision)


def _resolve_hub(model: str, revision: str | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    patterns = [f"*{suffix}" for suffix in _WANTED_SUFFIXES]
    try:
        path = snapshot_download(model, revision=revision, allow_patterns=patterns, local_files_only=True)
    except Exception:  # not cached: try the network once
        try:
            path = snapshot_download(model, revision=revision, allow_patterns=patterns)
        except Exception as error:
            raise ModelError(
                f"model {model!r} is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and could not be downloaded: "
                f"{type(error).__name__}: {error}"
            ) from None
    return ResolvedModel(model, path, Path(path).name)


def resolve_model(model: str, revision: str | None = None, storage_options: dict[str, Any] | None = None) -> ResolvedModel:
    """Turn a spec's `model` into a local folder, downloading it if it is remote."""
    if model.startswith("s3://"):
        return _download_s3(model, storage_options)
    if _is_hub_id(model):
        return _resolve_hub(model, revision)
    folder = Path(model).expanduser().resolve()
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"no diffusers model at {folder}: model_index.json not found there")
    return ResolvedModel(model, str(folder), _local_fingerprint(folder))


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            # bf16 keeps fp16's speed without the VAE overflows fp16 shows on SDXL.
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def load_pipeline(kind: str, resolved: ResolvedModel, dtype: str, device: str, scheduler: str | None = None):
    """Load the diffusers pipeline that serves a stage kind from a resolved model folder."""
    import diffusers

    loaders = {
        "txt2img": diffusers.AutoPipelineForText2Image,
        "img2img": diffusers.AutoPipelineForImage2Image,
        "inpaint": diffusers.AutoPipelineForInpainting,
        # The x4 upscaler has no AutoPipeline; its model_index.json names its class.
        "upscale": diffusers.DiffusionPipeline,
    }
    try:
        pipe = loaders[kind].from_pretrained(
            resolved.path, dtype=torch_dtype(dtype, device), use_safetensors=True
        )
    except Exception as error:
        raise ModelError(f"cannot load {resolved.source!r} as a {kind} pipeline: {type(error).__name__}: {error}") from None
    if kind == "upscale" and "Upscale" not in type(pipe).__name__:
        raise ModelError(f"{resolved.source!r} is a {type(pipe).__name__}, not an upscale pipeline")
    if scheduler:
        scheduler_class = getattr(diffusers, scheduler, None)
        if scheduler_class is None:
            raise ModelError(f"unknown scheduler {scheduler!r}: not a diffusers scheduler class")
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
