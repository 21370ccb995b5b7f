"""LoRA adapters on a stage's model: declared on the stage (`loras`), loaded once per actor,
fused into the weights when rows cannot pick among them, else switched per pipeline call
with `set_adapters` (rows are grouped so each call has one adapter set).

Only safetensors files load: a pickled adapter could run code.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pipeline import storage
from pipeline.strict import Strict


# Bounds on what a spec may load per stage: adapters held on every actor, and their files
# (a large SDXL LoRA is under 2 GiB).
MAX_LORAS = 16
MAX_LORA_BYTES = 4 * 2**30


class LoraSpec(Strict):
    path: str = Field(
        description="The adapter's .safetensors file: a local path, an s3:// object, or a hub file "
        "'org/repo/file.safetensors' (diffusers or kohya format; UNet and text encoder weights)."
    )
    weight: float = Field(1.0, allow_inf_nan=False, description="Its scale; 0 gives the base model exactly.")
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Its name, which a row's `lora` column picks (input.columns.lora).",
    )

    @field_validator("path")
    @classmethod
    def _safetensors_only(cls, path: str) -> str:
        if not path.endswith(".safetensors"):
            raise ValueError(f"{path!r} is not a .safetensors file; pickled adapters can run code when loaded, "
                             "convert it to safetensors")
        return path


def lora_source(path: str) -> str:
    """"s3", "local" or "hub" ("org/repo/file.safetensors" that is no local file)."""
    if path.startswith("s3://"):
        return "s3"
    if path.startswith(("/", ".", "~", "file://")) or Path(path).exists() or path.count("/") < 2:
        return "local"
    return "hub"


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://")).expanduser()


def check_lora(path: str, storage_options: dict[str, Any] | None = None) -> None:
    """Fail fast (in the driver) when an adapter file is not there; FileNotFoundError
    saying where we looked. Hub files are checked when cached or reachable."""
    source = lora_source(path)
    size = 0
    if source == "local":
        if not _local(path).is_file():
            raise FileNotFoundError(f"no file {_local(path).resolve()}")
        size = _local(path).stat().st_size
    elif source == "s3":
        fs, inner = storage.filesystem(path, storage_options)
        if not fs.isfile(inner):
            raise FileNotFoundError(f"no object {path}")
        size = int(fs.info(inner).get("size") or 0)
    else:
        from huggingface_hub import file_exists, try_to_load_from_cache

        repo, filename = _hub_parts(path)
        if not isinstance(try_to_load_from_cache(repo, filename), str) and not file_exists(repo, filename):
            raise FileNotFoundError(f"no file {filename} in the hub repository {repo}")
    if size > MAX_LORA_BYTES:
        raise ValueError(f"{size} bytes is over the {MAX_LORA_BYTES >> 30} GiB a LoRA adapter may take")


def _hub_parts(path: str) -> tuple[str, str]:
    """("org/repo", "file.safetensors") of "org/repo/file.safetensors"."""
    owner, name, filename = path.split("/", 2)
    return f"{owner}/{name}", filename


def fetch_lora(path: str, storage_options: dict[str, Any] | None = None) -> Path:
    """The adapter as a local file: itself, an s3 object downloaded once per node into the
    cache (keyed by its ETag, written by an atomic rename), or a hub download."""
    from pipeline.models import cache_root

    source = lora_source(path)
    if source == "local":
        return _local(path).resolve()
    if source == "hub":
        from huggingface_hub import hf_hub_download

        repo, filename = _hub_parts(path)
        return Path(hf_hub_download(repo, filename))
    fs, inner = storage.filesystem(path, storage_options)
    tag = str(fs.info(inner).get("ETag", "")).strip('"')
    target = cache_root() / "loras" / hashlib.sha256(f"{path}|{tag}".encode()).hexdigest()[:24] / "adapter.safetensors"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".partial-{os.getpid()}")
        try:
            fs.get_file(inner, str(partial))
            os.replace(partial, target)
        finally:
            if partial.exists():
                os.unlink(partial)
    return target


class Adapters:
    """A stage's adapters on its pipeline. fuse: fuse the whole set at its weights once
    (rows cannot pick); else keep them apart and `use` a set per call."""

    def __init__(self, pipe, loras: list[LoraSpec], storage_options: dict[str, Any] | None, fuse: bool):
        self.pipe, self.loras, self.fused = pipe, {lora.name: lora for lora in loras}, fuse and bool(loras)
        self._active: str | None = None
        if not loras:
            return
        if not hasattr(pipe, "load_lora_weights"):
            raise ValueError(f"a {type(pipe).__name__} takes no LoRA adapters")
        # A Serve replica's kinds share one model's components: the first loads (and fuses) them.
        present = {name for names in pipe.get_list_adapters().values() for name in names}
        for lora in loras:
            if lora.name not in present:
                file = fetch_lora(lora.path, storage_options)
                pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=lora.name,
                                       use_safetensors=True)
        self.use("")
        if self.fused and not present:
            pipe.fuse_lora(adapter_names=list(self.loras))

    def weights(self, pick: str) -> dict[str, float]:
        """The adapters a call runs with: the one a row picks, else all at their weights."""
        chosen = [self.loras[pick]] if pick else list(self.loras.values())
        return {lora.name: lora.weight for lora in chosen}

    def use(self, pick: str) -> None:
        """Make the adapters `pick` names the active ones (set_adapters), if they are not."""
        if not self.loras or pick == self._active or (self.fused and self._active is not None):
            return
        weights = self.weights(pick)
        self.pipe.set_adapters(list(weights), list(weights.values()))
        self._active = pick

    def row_error(self, pick: str) -> str | None:
        if not pick:
            return None
        if not self.loras:
            return None  # the column is for stages that declare adapters
        if pick not in self.loras:
            return f"'{pick}' is not one of this stage's loras ({', '.join(self.loras)})"
        if self.fused:
            return "this stage fuses its loras (fuse_loras: true), so rows cannot pick one; set fuse_loras: false"
        return None

