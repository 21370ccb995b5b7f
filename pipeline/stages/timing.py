"""Per-part timings of a diffusers call: text encoding, VAE encode/decode, and the rest
(denoising), measured by wrapping the pipeline's own methods on this one instance.

On CUDA each wrapped call synchronises before reading the clock; otherwise asynchronous
kernels would be charged to whichever part happens to wait for them. That is one sync per
part per batch, small next to a denoising loop.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict


class PartTimer:
    def __init__(self, pipe, device: str):
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = device.startswith("cuda")
        self._wrap(pipe, "encode_prompt", "text_encode")
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            self._wrap(vae, "encode", "vae")
            self._wrap(vae, "decode", "vae")

    def _now(self) -> float:
        if self._sync:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def _wrap(self, owner, name: str, part: str) -> None:
        original = getattr(owner, name, None)
        if original is None:
            return

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = self._now()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[part] += self._now() - started

        # An instance attribute shadows the method for this pipeline only.
        object.__setattr__(owner, name, timed)

    def take(self) -> dict[str, float]:
        """The parts measured since the last take, and reset."""
        parts = dict(self.seconds)
        self.seconds.clear()
        return parts
