"""`synth report`: one self-contained HTML page about an output folder (local or s3://).

    data.py    job.json and the metadata, folded into a bounded OutputSummary
    runs.py    the run records under runs/
    thumbs.py  small data-URI thumbnails of the sampled images
    svg.py     the two plots as inline SVG
    page.py    the HTML

The page fetches nothing (images inline, CSS inline, no script), and its size is bounded by
the samples and error groups shown, not by the output's row count.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from pipeline import storage
from pipeline.spec import SpecError

DEFAULT_SAMPLES = 48


def output_options(output_path: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The storage options to read an output with: those given, else the output's own from
    its job.json (read with none: credentials come from the environment)."""
    from pipeline.io.commit_log import CommitLog
    from pipeline.report.data import job_output_options, read_job

    if given is not None:
        return given
    if not storage.is_remote(output_path):
        return {}
    return job_output_options(read_job(CommitLog(output_path, {})))


def parse_options(text: str | None) -> dict[str, Any] | None:
    """--storage-options JSON, or None when not given."""
    if text is None:
        return None
    try:
        options = json.loads(text)
    except ValueError as error:
        raise SpecError(f"--storage-options: not valid JSON: {error}") from None
    if not isinstance(options, dict):
        raise SpecError("--storage-options: expected a JSON object, e.g. '{\"anon\": true}'")
    return options


def build_report(output_path: str, storage_options: dict[str, Any] | None = None,
                 samples: int = DEFAULT_SAMPLES) -> str:
    """The report page for an output, as HTML text. SpecError when it holds no synth output."""
    from pipeline.report.data import summarise
    from pipeline.report.page import render
    from pipeline.report.thumbs import thumbnails

    options = output_options(output_path, storage_options)
    summary = summarise(output_path, options, samples=samples)
    fs, root = storage.filesystem(output_path, options)
    thumbs = thumbnails(fs, root, [sample.key for chain in summary.chains for sample in chain.samples])
    return render(summary, thumbs)


def write_report(output_path: str, out: str | None = None, storage_options: dict[str, Any] | None = None,
                 samples: int = DEFAULT_SAMPLES) -> str:
    """Write the report (default: report.html in the output) atomically; return where."""
    options = output_options(output_path, storage_options)
    page = build_report(output_path, options, samples)
    out = out or storage.join(output_path, "report.html")
    _check_out(out, output_path)
    fs, inner = storage.filesystem(out, options)
    storage.write_bytes_atomic(fs, inner, page.encode("utf-8"))
    return out


def _check_out(out: str, output_path: str) -> None:
    """The page replaces a file by renaming over it: never a device, a link or a folder, and
    never inside the output's own records (a page among the metadata would break its reads)."""
    inside = posixpath.normpath(out).removeprefix(posixpath.normpath(output_path).rstrip("/") + "/")
    if inside != posixpath.normpath(out) and inside.split("/")[0] in ("metadata", "runs", "lease", "images"):
        raise SpecError(f"--out: {out} is inside the output's {inside.split('/')[0]}/ folder; write the page elsewhere")
    if storage.is_remote(out):
        return
    local = out.removeprefix("file://")
    if os.path.islink(local) or (os.path.exists(local) and not os.path.isfile(local)):
        raise SpecError(f"--out: {out} exists and is not a regular file (a link, a device or a folder); "
                        "name a new file or a plain one to replace")
