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
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from pipeline import storage

# Files a diffusers folder needs: model_index.json at the top, and per component its
# config, tokenizer files and safetensors weights. Top-level single-file checkpoints and
# weight variants (fp16, non-EMA) are left out: for SD1.5 they are over 10 GB we never load.
_ALLOW = ["model_index.json", "*/*.json", "*/*.txt", "*/*.model", "*/*.safetensors"]
_IGNORE = ["*.fp16.*", "*non_ema*", "*.ema.*"]
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")


class ModelError(RuntimeError):
    """A model that cannot be found or loaded; the message says where we looked."""


@dataclass(frozen=True)
class ResolvedModel:
    source: str  # what the spec said
    path: str  # a local folder holding the diffusers pipeline
    revision: str  # hub commit, or a fingerprint of the files for local and s3 models


def cache_root() -> Path:
    return Path(os.environ.get("SYNTH_CACHE", Path.home() / ".cache" / "synth"))


# Models that ship inside the package, named "synth:<name>" (a colon never appears in hub ids).
BUILTIN_MODELS = {"synth:shapes": Path(__file__).parent / "shapes" / "model"}


def builtin_folder(model: str) -> Path:
    folder = BUILTIN_MODELS.get(model)
    if folder is None:
        raise ModelError(f"unknown built-in model {model!r}; built in: {', '.join(BUILTIN_MODELS)}")
    if not (folder / "model_index.json").is_file():
        raise ModelError(f"built-in model {model!r} is missing from {folder}; retrain it with `synth train-tiny {folder}`")
    return folder


def model_source(model: str) -> str:
    """"s3", "local", "builtin" or "hub": the one place that decides where a spec's `model` lives.

    A local folder is an absolute or ./-relative path, or a relative path that exists here
    (the driver makes it absolute before workers see it); anything else without a URI
    scheme is a hub id such as "org/name".
    """
    if model.startswith("s3://"):
        return "s3"
    if model.startswith("synth:"):
        return "builtin"
    if model.startswith(("/", ".", "~", "file://")) or Path(model).exists():
        return "local"
    return "hub"


def _allow(allow_pickle: bool) -> list[str]:
    return _ALLOW + [f"*/*{suffix}" for suffix in PICKLE_SUFFIXES] if allow_pickle else _ALLOW


def _wanted(rel: str, allow_pickle: bool) -> bool:
    return any(fnmatch(rel, p) for p in _allow(allow_pickle)) and not any(fnmatch(rel, p) for p in _IGNORE)


def _fingerprint(entries: list[tuple[str, Any]]) -> str:
    """A short hash over the files' names, sizes and contents (local files, read once per file
    version) or ETags (s3 objects): it changes when a model changes. Labelled "files:" (it is
    not a hub commit)."""
    digest = hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()
    return f"files:{digest[:16]}"


@dataclass(frozen=True)
class _S3Listing:
    """An s3 model's objects, listed once: all of them (names under the prefix), the ones
    the download takes ({path: (name, size, ETag)}), and the revision those give."""

    names: list[str]
    wanted: dict[str, tuple[str, Any, str]]
    revision: str


def _s3_listing(fs, inner: str, model: str, allow_pickle: bool) -> _S3Listing:
    # Afresh: a listing cached by this process would hide a prefix overwritten since.
    fs.invalidate_cache(inner)
    listing = fs.find(inner, detail=True)
    if not listing:
        raise ModelError(f"no files under {model}")
    names = {path: path[len(inner) :].lstrip("/") for path in listing}
    wanted = {path: (names[path], info.get("size"), info.get("ETag", ""))
              for path, info in listing.items() if _wanted(names[path], allow_pickle)}
    return _S3Listing(list(names.values()), wanted, _fingerprint(list(wanted.values())))


def is_file_revision(revision: str | None) -> bool:
    """A `files:` fingerprint (local, built-in and s3 models), as opposed to a hub revision."""
    return bool(revision) and revision.startswith("files:")


def _check_pin(model: str, pinned: str | None, found: str) -> None:
    """A model whose files no longer give the revision the run pinned: it was rewritten
    after the driver resolved it (a fine-tune saved over it, an s3 prefix overwritten).
    Loading it would mix two models' rows in one output, so refuse."""
    if is_file_revision(pinned) and found != pinned:
        raise ModelError(
            f"{model} changed after this run pinned it: its files give revision {found}, the run pinned {pinned}; "
            "no row is made with a model other than the pinned one. Restore the model, or rerun: the rerun "
            "refuses the change unless run with --allow-model-change"
        )


def refuse_pickles(files: list[str], model: str) -> None:
    found = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if found:
        raise ModelError(
            f"{model} holds pickle weights ({', '.join(found[:3])}{'...' if len(found) > 3 else ''}), which can run "
            "code when loaded; convert them to safetensors, or set allow_pickle: true on the stage if you trust them"
        )


def refuse_pickle_only_components(files: list[str], model: str) -> None:
    """For a remote model, fetched without its pickle files: refuse it when a component
    (a subfolder) has pickle weights and no safetensors, since it could not load. A mirror
    that ships both, as many hub repos do, is fine: the pickles are never downloaded."""
    by_component: dict[str, list[str]] = {}
    for rel in files:
        component, sep, name = rel.partition("/")
        if sep:
            by_component.setdefault(component, []).append(name)
    pickle_only = sorted(
        component
        for component, names in by_component.items()
        if any(n.endswith(PICKLE_SUFFIXES) for n in names)
        # only weights the download takes: fp16, EMA and non-EMA variants are skipped
        and not any(n.endswith(".safetensors") and _wanted(f"{component}/{n}", False) for n in names)
    )
    if pickle_only:
        raise ModelError(
            f"{model}: {', '.join(pickle_only)} {'has' if len(pickle_only) == 1 else 'have'} only pickle weights, "
            "which can run code when loaded and are not downloaded; convert them to safetensors, or set "
            "allow_pickle: true on the stage if you trust them"
        )


def _content_digest(file: Path) -> str:
    """sha256 of every byte of a file, read once per version of the file on a node: the
    digest is cached under $SYNTH_CACHE/digests by the file's path, size, inode and
    modification time, so a touch or a copy costs one more read, never a false change."""
    st = file.stat()
    key = hashlib.sha256(f"{file.resolve()}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}".encode()).hexdigest()
    cached = cache_root() / "digests" / key
    try:
        return cached.read_text()
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 23):
            digest.update(chunk)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{key}.tmp-{os.getpid()}")
        partial.write_text(digest.hexdigest())
        os.replace(partial, cached)
    except OSError:  # a read-only cache: the digest is still right, only not kept
        pass
    return digest.hexdigest()


def _local_fingerprint(folder: Path) -> str:
    """The files the loader reads (model_index.json, each component's configs, tokenizer
    files and weights; not a .git folder, a README or a cache), by name, size and every byte
    (see _content_digest): a copy or a touch keeps it, any rewritten byte changes it, and on
    a cluster every node's copy of the same model gives the same one."""
    entries = []
    for file in sorted(folder.rglob("*")):
        rel = file.relative_to(folder).as_posix()
        if file.is_file() and _wanted(rel, allow_pickle=True):
            entries.append((rel, file.stat().st_size, _content_digest(file)))
    return _fingerprint(entries)


def check_model_source(
    model: str,
    revision: str | None = None,
    storage_options: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    kind: str | None = None,
) -> str | None:
    """Fail fast (in the driver, before any GPU is held) when a model is missing, holds
    pickle weights that are not allowed, is a hub id that is neither cached nor reachable,
    or (for `kind`) is an upscaler where a generator is needed or the other way round.

    Returns the model's revision as the workers will resolve it, computed cheaply: the
    `files:` fingerprint of a local, built-in or s3 model (names, sizes, times or ETags,
    config contents), or a hub model's commit (None when the hub names none). A run pins it
    (see CommitLog.check_models). A `files:` revision given here must match the files."""
    source = model_source(model)
    index = None  # model_index.json's bytes, where reading them costs nothing (not a hub download)
    if source == "s3":
        fs, inner = storage.filesystem(model, storage_options)
        try:
            index = fs.cat_file(storage.join(inner, "model_index.json"))
        except FileNotFoundError:
            raise ModelError(f"no diffusers model at {model}: model_index.json not found there") from None
        listing = _s3_listing(fs, inner, model, allow_pickle)
        found = listing.revision
        if not allow_pickle:
            refuse_pickle_only_components(listing.names, model)
    elif source in ("local", "builtin"):
        folder = builtin_folder(model) if source == "builtin" else Path(model.removeprefix("file://")).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelError(f"no diffusers model at {folder}: model_index.json not found there")
        if not allow_pickle:
            refuse_pickles([p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()], str(folder))
        index = (folder / "model_index.json").read_bytes()
        found = _local_fingerprint(folder.resolve())
    else:
        index, found = _check_hub(model, revision)
    if source != "hub":
        _check_pin(model, revision, found)
    if kind and index:
        _check_kind(model, kind, json.loads(index).get("_class_name", ""))
    return found


def pipeline_class_name(
    model: str, revision: str | None = None, storage_options: dict[str, Any] | None = None
) -> str | None:
    """The pipeline class model_index.json names (its `_class_name`), read where that costs
    no download: a local, built-in or s3 model, or a hub model already in the cache. None
    for a hub model not cached (its workers detect its family once they load it)."""
    source = model_source(model)
    try:
        if source == "s3":
            fs, inner = storage.filesystem(model, storage_options)
            index = fs.cat_file(storage.join(inner, "model_index.json"))
        elif source in ("local", "builtin"):
            folder = builtin_folder(model) if source == "builtin" else Path(model.removeprefix("file://")).expanduser()
            index = (folder / "model_index.json").read_bytes()
        else:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(model, revision=revision, allow_patterns=["model_index.json"],
                                       local_files_only=True)
            index = (Path(folder) / "model_index.json").read_bytes()
    except Exception:  # check_model_source has said what is wrong with a model that is not there
        return None
    return json.loads(index).get("_class_name") or None


def _check_kind(model: str, kind: str, pipeline_class: str) -> None:
    """The x4 upscaler and the generators are different pipelines: each loads only as its own."""
    from pipeline.stages import STAGES

    upscaler = "Upscale" in pipeline_class
    if STAGES[kind].upscaler and not upscaler:
        raise ModelError(f"{model!r} is a {pipeline_class}, not an upscale pipeline")
    if not STAGES[kind].upscaler and upscaler:
        raise ModelError(f"{model!r} is an upscaler ({pipeline_class}); a {kind} stage needs a text-to-image model")


def _check_hub(model: str, revision: str | None) -> tuple[bytes | None, str | None]:
    """The cached model_index.json's bytes (None once the hub has answered that it would
    serve the file), and the commit the revision resolves to: the cached snapshot's (as the
    workers, which look in the cache first, would load it), else the hub's answer.
    A hub id passes when its model_index.json is cached, or when the hub serves it to
    this token: one HEAD request that tells a missing repo, a missing revision, a repo that
    is not a diffusers pipeline, and a gated repo whose terms this token has not accepted
    apart. Listing the repo (`model_info`) succeeds for all four."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(model, revision=revision, allow_patterns=["model_index.json"], local_files_only=True)
        return (Path(folder) / "model_index.json").read_bytes(), Path(folder).name
    except Exception:
        pass
    at = f" at revision {revision!r}" if revision else ""
    try:
        metadata = get_hf_file_metadata(hf_hub_url(model, "model_index.json", revision=revision), timeout=10)
    except GatedRepoError:  # before its parent class, RepositoryNotFoundError
        raise ModelError(
            f"model {model!r} is gated on the Hugging Face hub and this token has no access: accept its "
            f"terms at https://huggingface.co/{model} with the account whose token HF_TOKEN holds on every node"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"model {model!r} is not on the Hugging Face hub, or is private and HF_TOKEN has no access to it"
            f"{_no_local_folder(model)}"
        ) from None
    except RevisionNotFoundError:
        raise ModelError(f"model {model!r} has no revision {revision!r} on the Hugging Face hub") from None
    except RemoteEntryNotFoundError:
        raise ModelError(
            f"model {model!r}{at} has no model_index.json: it is not a diffusers pipeline repository"
        ) from None
    except Exception as error:
        raise ModelError(
            f"model {model!r} is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub cannot be reached: "
            f"{type(error).__name__}: {str(error)[:200]}{_no_local_folder(model)}"
        ) from None
    return None, metadata.commit_hash


def _no_local_folder(model: str) -> str:
    """A hub id and a relative path look alike ("models/sd15"): say we looked for both."""
    return f"; nor is there a local folder {os.path.abspath(model)}" if "/" in model else ""


def _download_s3(
    model: str, storage_options: dict[str, Any] | None, allow_pickle: bool, pinned: str | None = None
) -> ResolvedModel:
    """Download an s3:// model once per node into the local cache, then reuse it.

    The cache key includes the objects' ETags, so a changed model is fetched again. Several
    actors on one node may start together: a file lock lets one download while the others
    wait, and the finished folder appears by an atomic rename, never half-written.
    pinned: the `files:` revision the run pinned; a node that has it cached loads it even
    if the prefix was overwritten since, and one that must download refuses other files.
    """
    import fcntl

    def target_of(revision: str) -> Path:
        return cache_root() / "models" / (hashlib.sha256(model.encode()).hexdigest()[:16] + "-" + revision.split(":")[1])

    if is_file_revision(pinned) and (target_of(pinned) / "model_index.json").is_file():
        return ResolvedModel(model, str(target_of(pinned)), pinned)
    fs, inner = storage.filesystem(model, storage_options)
    listing = _s3_listing(fs, inner, model, allow_pickle)
    revision = listing.revision
    _check_pin(model, pinned, revision)
    target = target_of(revision)
    if (target / "model_index.json").is_file():
        return ResolvedModel(model, str(target), revision)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "model_index.json").is_file():
            # Holding the lock, no one else downloads this model on this node: any staging
            # folder left is from a process killed mid-download (gigabytes for a real model).
            for stale in target.parent.glob(f"{target.name}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = Path(f"{target}.partial-{os.getpid()}")
            try:
                for path, (rel, _, _) in listing.wanted.items():
                    local = staging / rel
                    local.parent.mkdir(parents=True, exist_ok=True)
                    fs.get_file(path, str(local))
                os.replace(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return ResolvedModel(model, str(target), revision)


def _resolve_hub(model: str, revision: str | None, allow_pickle: bool) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    patterns = dict(allow_patterns=_allow(allow_pickle), ignore_patterns=_IGNORE)
    try:
        path = snapshot_download(model, revision=revision, local_files_only=True, **patterns)
    except Exception:  # not cached: try the network once
        try:
            path = snapshot_download(model, revision=revision, **patterns)
        except Exception as error:
            raise ModelError(
                f"model {model!r} is not in the local Hugging Face cache "
                f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and could not be downloaded: "
                f"{type(error).__name__}: {error}{_no_local_folder(model)}"
            ) from None
    return ResolvedModel(model, path, Path(path).name)


def resolve_model(
    model: str, revision: str | None = None, storage_options: dict[str, Any] | None = None, allow_pickle: bool = False
) -> ResolvedModel:
    """Turn a spec's `model` into a local folder, downloading it if it is remote (without
    pickle files unless allowed).

    revision: a hub branch, tag or commit; for local, built-in and s3 models a `files:`
    revision pins the files: a model whose files give another one raises ModelError
    rather than load (the driver pins each stage's model this way for its workers)."""
    source = model_source(model)
    if source == "s3":
        return _download_s3(model, storage_options, allow_pickle, pinned=revision)
    if source == "hub":
        return _resolve_hub(model, revision, allow_pickle)
    if source == "builtin":
        folder = builtin_folder(model)
        found = _local_fingerprint(folder)
    else:
        folder = Path(model.removeprefix("file://")).expanduser().resolve()
        if not (folder / "model_index.json").is_file():
            raise ModelError(f"no diffusers model at {folder}: model_index.json not found there")
        found = _local_fingerprint(folder)
    _check_pin(model, revision, found)
    return ResolvedModel(model, str(folder), found)


def torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            # bf16 keeps fp16's speed without the VAE overflows fp16 shows on SDXL.
            # Native bf16 only (Ampere and later); T4/V100 would emulate it, slowly.
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.float32
    return getattr(torch, name)


def register_moved_classes() -> None:
    """Let model folders name the classes diffusers moved to `pipelines/deprecated`.

    Würstchen's components (and Stable Cascade's VQGAN) now live in
    diffusers.pipelines.deprecated.wuerstchen; a model_index.json names them by library
    "wuerstchen" (hub checkpoints) or "diffusers" (folders saved by diffusers 0.42 itself),
    and neither resolves any more, so such a pipeline does not load. Registering the module
    under its old name, and its classes on the package, makes both load."""
    import sys

    import diffusers
    import diffusers.pipelines as pipelines
    from diffusers.pipelines.deprecated import wuerstchen

    if "diffusers.pipelines.wuerstchen" not in sys.modules:
        sys.modules["diffusers.pipelines.wuerstchen"] = wuerstchen
        setattr(pipelines, "wuerstchen", wuerstchen)
    for name in ("WuerstchenPrior", "WuerstchenDiffNeXt", "PaellaVQModel"):
        if not hasattr(diffusers, name):
            setattr(diffusers, name, getattr(wuerstchen, name))


def check_controlnet(model: str, allow_pickle: bool = False) -> None:
    """Fail fast (in the driver) when a ControlNet is not a ControlNetModel folder (local) or
    repository (hub: checked when cached or reachable); ModelError saying what is wrong."""
    if model_source(model) == "local":
        folder = Path(model.removeprefix("file://")).expanduser()
        config = folder / "config.json"
        if not config.is_file():
            raise ModelError(f"no diffusers ControlNet at {folder}: config.json not found there")
        found = json.loads(config.read_text()).get("_class_name", "")
        if found != "ControlNetModel":  # what the loader builds; Flux's or SD3's would fail there
            raise ModelError(f"{folder} holds a {found or 'model of no class'}, not a ControlNetModel (the ControlNet "
                             "of the sd and sdxl families)")
        if not allow_pickle:
            refuse_pickles([p.name for p in folder.iterdir() if p.is_file()], str(folder))
        return
    from huggingface_hub import file_exists, try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(model, "config.json"), str) and not file_exists(model, "config.json"):
        raise ModelError(f"no ControlNet {model!r} on the Hugging Face hub (no config.json there){_no_local_folder(model)}")


def load_pipeline(
    kind: str, resolved: ResolvedModel, dtype: str, device: str, scheduler: str | None = None, allow_pickle: bool = False,
    controlnet: str | None = None,
):
    """Load the diffusers pipeline that serves a stage kind from a resolved model folder;
    with a ControlNet (a local folder or hub id), the kind's ControlNet pipeline."""
    import diffusers

    from pipeline.stages import STAGES

    declared = STAGES[kind]
    register_moved_classes()
    # Pickles in user folders were refused in preflight; remote models arrive without them;
    # a hub cache may still hold some from other downloads, which use_safetensors=True
    # never opens. None: prefer safetensors, fall back to pickles only where explicitly allowed.
    weights = dict(dtype=torch_dtype(dtype, device), use_safetensors=None if allow_pickle else True)
    extra = {}
    if controlnet:
        try:
            extra["controlnet"] = diffusers.ControlNetModel.from_pretrained(controlnet.removeprefix("file://"), **weights)
        except Exception as error:
            raise ModelError(f"cannot load the ControlNet {controlnet!r}: {type(error).__name__}: {error}") from None
    try:
        pipe = getattr(diffusers, declared.pipeline_class).from_pretrained(resolved.path, **weights, **extra)
    except Exception as error:
        raise ModelError(f"cannot load {resolved.source!r} as a {kind} pipeline: {type(error).__name__}: {error}") from None
    if declared.upscaler and "Upscale" not in type(pipe).__name__:
        raise ModelError(f"{resolved.source!r} is a {type(pipe).__name__}, not an upscale pipeline")
    if scheduler:
        scheduler_class = getattr(diffusers, scheduler, None)
        if scheduler_class is None:
            raise ModelError(f"unknown scheduler {scheduler!r}: not a diffusers scheduler class")
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
