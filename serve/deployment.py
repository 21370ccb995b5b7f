"""The model deployment: a replica holds one configured model's stage workers (the batch
pipeline's own, pipeline/stages/) and runs concurrent requests as one batch (@serve.batch).

torch and diffusers are imported in the constructor, inside the replica's process.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve

from serve.api import Result, Work

logger = logging.getLogger("synth.serve")


def _slice(batch: dict[str, np.ndarray], rows: slice) -> dict[str, np.ndarray]:
    return {name: column[rows] for name, column in batch.items()}


class ModelServer:
    """One replica of one served model (serve/config.py ModelConfig, as a dict)."""

    def __init__(self, model: dict[str, Any], max_pixels: int):
        import torch

        from pipeline.stages import STAGES, WORKERS
        from serve.config import ModelConfig
        from serve.metrics import Metrics

        config = ModelConfig.model_validate(model)
        self.name, self.max_pixels = config.name, max_pixels
        torch.set_num_threads(max(1, int(config.cpus)))

        # Kinds whose stages name the same model folder share its weights: the first loads
        # them (the batch job's loader), the others wrap the same components (from_pipe).
        self.workers: dict[str, Any] = {}
        loaded: dict[tuple, Any] = {}
        for stage in config.stages:
            key = (stage.model, stage.revision, stage.dtype, stage.allow_pickle, STAGES[stage.kind].upscaler)
            first = loaded.get(key)
            options = dict(overrides=stage.row_params(), max_output_pixels=max_pixels)
            if first is None:
                worker = WORKERS[stage.kind](stage, **options)
                loaded[key] = worker
            else:
                worker = WORKERS[stage.kind](stage, pipe=self._share(first.pipe, stage), revision=first.revision,
                                             **options)
            self.workers[stage.kind] = worker
        self.generate.set_max_batch_size(config.max_batch_size)
        self.generate.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self.metrics = Metrics(self.name)
        logger.info("model %s ready: %s", self.name, ", ".join(self.workers))

    @staticmethod
    def _share(pipe, stage):
        """The pipeline of another kind over the same components."""
        import diffusers

        from pipeline.stages import STAGES

        shared = getattr(diffusers, STAGES[stage.kind].pipeline_class).from_pipe(pipe)
        if stage.scheduler:
            shared.scheduler = getattr(diffusers, stage.scheduler).from_config(shared.scheduler.config)
        shared.set_progress_bar_config(disable=True)
        return shared

    def kinds(self) -> list[str]:
        return list(self.workers)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(self, works: list[Work]) -> list[Result]:
        # The worker's call is CPU/GPU-bound: off the event loop, so health checks and new
        # requests are still received while a batch runs (batches run one at a time).
        return await asyncio.get_running_loop().run_in_executor(None, self._run, works)

    def _run(self, works: list[Work]) -> list[Result]:
        results: list[Result | None] = [None] * len(works)
        by_kind: dict[str, list[int]] = {}
        for index, work in enumerate(works):
            by_kind.setdefault(work.kind, []).append(index)
        for kind, members in by_kind.items():
            try:
                done = self._run_kind(kind, [works[index] for index in members])
            except Exception:
                if len(members) == 1:
                    raise
                # One request's error must not fail its batch mates: each again on its own,
                # so only the request that raises gets the error (a 500).
                logger.exception("model %s: a batch of %d %s requests failed; running them one by one",
                                 self.name, len(members), kind)
                done = [self._alone(kind, works[index]) for index in members]
            for index, result in zip(members, done):
                results[index] = result
        return results

    def _alone(self, kind: str, work: Work) -> Result:
        try:
            return self._run_kind(kind, [work])[0]
        except Exception as error:
            logger.exception("model %s: a %s request failed", self.name, kind)
            return Result([None] * len(work.rows), [f"{kind}: the pipeline failed: {type(error).__name__}"], 1)

    def _run_kind(self, kind: str, works: list[Work]) -> list[Result]:
        from pipeline import batch as B
        from pipeline.io.prepare import RowRules, canonical_batch
        from pipeline.io.writer import Encoding, encode_images

        # 1. Every request of this kind in one canonical batch: the worker groups rows of
        # equal parameters and size into one pipeline call each (batch_size rows at most).
        rows = [dict(row, id=f"{index}-{row['id']}") for index, work in enumerate(works) for row in work.rows]
        rules = RowRules(id_column="id", max_image_pixels=self.max_pixels, prompt_required=False)
        out = self.workers[kind](canonical_batch(rows, rules))
        self.metrics.batch(kind, len(works), len(rows))

        # 2. Each request's images, encoded as it asked.
        results, start = [], 0
        for work in works:
            part = _slice(out, slice(start, start + len(work.rows)))
            start += len(work.rows)
            encoded = encode_images(part, Encoding(work.format, work.quality))
            failed = [str(error) for error, status in zip(part[B.ERROR], part[B.STATUS]) if status != B.OK]
            self.metrics.images(kind, len(work.rows) - len(failed), len(failed))
            sizes = [(int(w), int(h)) for w, h in zip(part[B.WIDTH], part[B.HEIGHT])]
            results.append(Result(encoded.data, failed, len(works), sizes))
        return results
