"""What a run did: rows committed, skipped and failed, and how fast."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunSummary:
    rows_ok: int = 0
    rows_failed: int = 0
    rows_skipped: int = 0  # committed by an earlier run of the same output
    skipped_failed: int = 0  # of those, rows committed as failed (not retried this run)
    wall_seconds: float = 0.0
    first_batch_seconds: float | None = None
    errors: list[str] = field(default_factory=list)  # a few examples, "id: message"

    @property
    def rows(self) -> int:
        return self.rows_ok + self.rows_failed

    @property
    def failed_share(self) -> float:
        """Failed rows over all committed rows, this run's and earlier runs': a rerun that
        finds nothing to do still reports the job's real outcome."""
        total = self.rows + self.rows_skipped
        return (self.rows_failed + self.skipped_failed) / total if total else 0.0

    @property
    def images_per_second(self) -> float:
        return self.rows_ok / self.wall_seconds if self.wall_seconds else 0.0

    def add(self, row_id: str, status: str, error: str | None) -> None:
        """Count one row this run committed."""
        if status == "ok":
            self.rows_ok += 1
            return
        self.rows_failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{row_id}: {error}")

    def exit_code(self, max_failed_fraction: float) -> int:
        """0, or 1 when more rows failed than the job allows."""
        return 1 if self.failed_share > max_failed_fraction else 0

    def line(self) -> str:
        skipped = f", {self.rows_skipped} already done" if self.rows_skipped else ""
        return (
            f"{self.rows_ok} rows ok, {self.rows_failed} failed{skipped}, "
            f"{self.images_per_second:.2f} images/s, wall {self.wall_seconds:.1f} s"
        )
