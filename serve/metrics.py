"""synth's own metrics, beside Ray Serve's built-in ones (requests, latency, replicas):
images generated and failed, and the size of each batch. They are exported with Ray's
metrics (the Prometheus endpoint of each node's metrics agent), tagged by model and kind."""

from __future__ import annotations

# Requests gathered per call, and the images they held: powers of two up to 128.
_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128]


class Metrics:
    def __init__(self, model: str):
        from ray.serve.metrics import Counter, Histogram

        tags = ("model", "kind")
        self.model = model
        self.generated = Counter("synth_images_generated", "Images generated and returned.", tag_keys=tags)
        self.failed = Counter("synth_images_failed", "Images whose row failed (bad input, NaN output...).",
                              tag_keys=tags)
        self.requests_per_batch = Histogram("synth_batch_requests", "Requests run in one batched call.",
                                            boundaries=_BOUNDARIES, tag_keys=tags)
        self.images_per_batch = Histogram("synth_batch_images", "Images run in one batched call.",
                                          boundaries=_BOUNDARIES, tag_keys=tags)

    def batch(self, kind: str, requests: int, images: int) -> None:
        tags = {"model": self.model, "kind": kind}
        self.requests_per_batch.observe(requests, tags)
        self.images_per_batch.observe(images, tags)

    def images(self, kind: str, ok: int, failed: int) -> None:
        tags = {"model": self.model, "kind": kind}
        if ok:
            self.generated.inc(ok, tags)
        if failed:
            self.failed.inc(failed, tags)
