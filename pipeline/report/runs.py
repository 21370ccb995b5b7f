"""Run records: `runs/<started>-<run_id>.json`, one per `synth run` on the output.

A run writes its record when it starts (status "running") and rewrites it when it ends, so
a record still "running" is a run that is in progress or was killed. Outputs written before
runs existed have no runs/ folder; records from other versions may carry keys we do not
know (ignored) or lack some (shown as empty), and a record that cannot be read is shown as
"unreadable" rather than failing the whole report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipeline.io.commit_log import CommitLog

# The newest runs shown (file names start with the start time, so name order is time
# order); the report says how many older ones it left out. Bounds reading and the page.
MAX_RUNS = 100

STATUS_TEXT = {
    "running": "running (or killed)",
    "succeeded": "succeeded",
    "failed_rows": "too many failed rows",
    "error": "error",
    "stopped": "stopped by a signal",
}


@dataclass(frozen=True)
class RunRecord:
    name: str  # the record's file name
    run_id: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    status: str = "unreadable"
    exit_code: int | None = None
    message: str | None = None
    wall_seconds: float | None = None
    first_image_seconds: float | None = None
    rows_ok: int | None = None
    rows_failed: int | None = None
    rows_skipped: int | None = None
    rows_skipped_failed: int | None = None
    images_per_second: float | None = None
    retry_failed: bool | None = None
    spec_sha256: str | None = None
    synth_version: str | None = None
    ray_job_id: str | None = None
    host: str | None = None

    @property
    def status_text(self) -> str:
        return STATUS_TEXT.get(self.status, self.status)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def parse_run(data: Any, name: str) -> RunRecord:
    """A run record from its parsed JSON; wrong types become empty fields, never errors."""
    if not isinstance(data, dict):
        return RunRecord(name=name, message=f"not a JSON object but {type(data).__name__}")
    rows = data.get("rows") if isinstance(data.get("rows"), dict) else {}
    retry = data.get("retry_failed")
    return RunRecord(
        name=name,
        run_id=_text(data.get("run_id")),
        started_at=_text(data.get("started_at")),
        ended_at=_text(data.get("ended_at")),
        status=_text(data.get("status")) or "unknown",
        exit_code=_int(data.get("exit_code")),
        message=_text(data.get("message")),
        wall_seconds=_number(data.get("wall_seconds")),
        first_image_seconds=_number(data.get("first_image_seconds")),
        rows_ok=_int(rows.get("ok")),
        rows_failed=_int(rows.get("failed")),
        rows_skipped=_int(rows.get("skipped")),
        rows_skipped_failed=_int(rows.get("skipped_failed")),
        images_per_second=_number(data.get("images_per_second")),
        retry_failed=retry if isinstance(retry, bool) else None,
        spec_sha256=_text(data.get("spec_sha256")),
        synth_version=_text(data.get("synth_version")),
        ray_job_id=_text(data.get("ray_job_id")),
        host=_text(data.get("host")),
    )


def read_runs(log: CommitLog) -> tuple[list[RunRecord], int]:
    """(the newest MAX_RUNS records, oldest first; how many records the output holds)."""
    records, total = log.run_records(newest=MAX_RUNS)
    return [
        RunRecord(name=name, message=f"cannot read this record: {data}") if isinstance(data, Exception)
        else parse_run(data, name)
        for name, data in records
    ], total
