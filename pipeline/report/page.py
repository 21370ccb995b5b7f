"""The report as one self-contained HTML page: inline CSS, inline SVG, data-URI images.

Every string that comes from the output (prompts, ids, error messages, the job's name and
run records) goes through html.escape. A Content-Security-Policy forbids any fetch and any
script, so even a string that slipped through could neither load nor run anything.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from html import escape

from pipeline.report import svg
from pipeline.report.data import PARTS, OutputSummary
from pipeline.report.thumbs import MAX_SIDE, Thumbnail

MAX_GROUPS = 50  # error messages shown; the rest are counted in one line

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d232a;background:#f4f5f7}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:0 0 12px}h3{font-size:15px;margin:18px 0 8px}
section{background:#fff;border:1px solid #dde1e6;border-radius:8px;padding:18px 20px;margin:0 0 18px}
.sub{color:#5b6470;margin:0 0 14px}.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.facts dt{color:#5b6470}dl.facts dd{margin:0;overflow-wrap:anywhere}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0 0}
.card{border:1px solid #dde1e6;border-radius:8px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card.bad b{color:#c0392b}.card.good b{color:#2f6fb0}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px}
figure{margin:0;padding:6px;border:1px solid #e6e8eb;border-radius:6px;background:#fafbfc}
figure img,.missing{display:block;width:128px;height:128px;object-fit:contain;margin:0 auto;background:#eceef1}
figure img.small{image-rendering:pixelated}
.missing{display:flex;align-items:center;justify-content:center;text-align:center;font-size:12px;color:#c0392b}
figcaption{font-size:12px;margin-top:4px;overflow-wrap:anywhere}figcaption .mono{color:#5b6470;display:block}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e6e8eb;vertical-align:top}
th{background:#f7f8fa;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.msg{overflow-wrap:anywhere;max-width:560px}.ids{color:#5b6470;overflow-wrap:anywhere}
.status-succeeded{color:#1e7b34}.status-failed_rows,.status-error,.status-unreadable{color:#c0392b}
.status-running{color:#a86b00}
svg.plot{width:100%;max-width:860px;height:auto;display:block}
td.nowrap,td.num{white-space:nowrap}
svg .grid{stroke:#eceef1}svg .axis{stroke:#8a939e}svg .tick,svg .legend{font-size:11px;fill:#3b434c}
svg .label{font-size:12px;fill:#5b6470}svg .bar{fill:#2f6fb0}
.note{color:#5b6470;font-size:12px;margin:8px 0 0}
"""

# No fetch of any kind, no script: images are data URIs and styles inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

PART_MEANING = {
    "prepare": "reading the row, fetching and decoding its input images",
    "queue": "waiting in Ray Data's queues between steps",
    "text encode": "the text encoder",
    "denoise": "the denoiser's steps (stage time minus text encode and VAE)",
    "vae": "VAE encode and decode",
    "encode": "encoding the image file",
    "write": "uploading the image and the metadata",
}


def _e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def utc(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _header(summary: OutputSummary) -> str:
    job = summary.job or {}
    stages = [stage for stage in job.get("stages") or [] if isinstance(stage, dict)]
    chains = [chain.chain for chain in summary.chains] or [">".join(str(s.get("kind")) for s in stages)]
    models: list[str] = []
    for model in [m for chain in summary.chains for m in chain.models] or [s.get("model") for s in stages]:
        if model and model not in models:
            models.append(str(model))
    facts = [
        ("output", f'<span class="mono">{_e(summary.path)}</span>'),
        ("stage chain" + ("s" if len(chains) > 1 else ""), ", ".join(f"<code>{_e(c)}</code>" for c in chains)),
        ("model" + ("s" if len(models) > 1 else ""), ", ".join(f"<code>{_e(m)}</code>" for m in models)),
    ]
    output = job.get("output") if isinstance(job.get("output"), dict) else {}
    if output.get("format"):
        facts.append(("format", _e(output["format"])))
    if summary.first_commit is not None:
        facts.append(("committed", f"{_e(utc(summary.first_commit))} to {_e(utc(summary.last_commit))}"))
    facts.append(("metadata files", f"{summary.metadata_files:,}"))
    if summary.job is None:
        facts.append(("job.json", "missing"))
    cards = [("images", summary.ok, "good"), ("failed rows", summary.failed, "bad" if summary.failed else ""),
             ("rows committed", summary.rows, ""), ("runs", summary.runs_total, "")]
    return (
        f"<header><h1>{_e(summary.name or 'synth output')}</h1>"
        f'<p class="sub">synth run report, made {_e(utc(time.time()))}</p>'
        '<section><dl class="facts">'
        + "".join(f"<dt>{_e(name)}</dt><dd>{value}</dd>" for name, value in facts)
        + '</dl><div class="cards">'
        + "".join(f'<div class="card {kind}"><b>{count:,}</b>{_e(name)}</div>' for name, count, kind in cards)
        + "</div></section></header>"
    )


def _contact_sheet(summary: OutputSummary, thumbs: dict[str, Thumbnail | str]) -> str:
    parts = ['<section id="samples"><h2>Samples</h2>']
    if not any(chain.samples for chain in summary.chains):
        parts.append('<p class="sub">No images to show.</p>')
    for chain in summary.chains:
        if not chain.samples:
            continue
        parts.append(f"<h3><code>{_e(chain.chain)}</code>: {len(chain.samples):,} of {chain.ok:,} images</h3>"
                     '<div class="sheet">')
        for sample in chain.samples:
            thumb = thumbs.get(sample.key)
            tip = _e(f"{sample.id}\n{sample.prompt}")
            if isinstance(thumb, Thumbnail):
                small = ' class="small"' if max(thumb.width, thumb.height) < MAX_SIDE else ""
                picture = (f'<img{small} src="{thumb.uri}" width="{thumb.width}" height="{thumb.height}" '
                           f'alt="{_e(sample.prompt)}" title="{tip}" data-id="{_e(sample.id)}">')
            else:
                picture = f'<div class="missing" title="{_e(thumb)}">{_e(_short(thumb or "no image", 60))}</div>'
            parts.append(f"<figure>{picture}<figcaption><span class=\"mono\">{_e(_short(sample.id, 24))}</span>"
                         f"{_e(_short(sample.prompt, 80))}</figcaption></figure>")
        parts.append("</div>")
    parts.append('<p class="note">Per stage chain, the images whose keys (a hash of the row id) come first: '
                 "a fixed sample spread over the whole output. Hover for the full id and prompt.</p></section>")
    return "".join(parts)


def _failures(summary: OutputSummary) -> str:
    parts = [f'<section id="failures"><h2>Failed rows ({summary.failed:,})</h2>']
    if not summary.errors:
        parts.append('<p class="sub">No failed rows.</p></section>')
        return "".join(parts)
    parts.append('<table><thead><tr><th class="num">rows</th><th>error</th><th>ids</th></tr></thead><tbody>')
    for group in summary.errors[:MAX_GROUPS]:
        more = group.count - len(group.ids)
        ids = ", ".join(f"<code>{_e(i)}</code>" for i in group.ids) + (f" and {more:,} more" if more > 0 else "")
        parts.append(f'<tr><td class="num">{group.count:,}</td><td class="msg">{_e(group.message)}</td>'
                     f'<td class="ids">{ids}</td></tr>')
    parts.append("</tbody></table>")
    rest = summary.errors[MAX_GROUPS:]
    if rest:
        parts.append(f'<p class="note">{len(rest):,} more messages ({sum(g.count for g in rest):,} rows) '
                     "not shown; read the metadata's error column for all of them.</p>")
    parts.append("</section>")
    return "".join(parts)


def _commits(summary: OutputSummary) -> str:
    parts = ['<section id="commits"><h2>Images committed over time</h2>']
    if not summary.commits:
        parts.append('<p class="sub">No commit times in the metadata.</p></section>')
        return "".join(parts)
    span = summary.last_commit - summary.first_commit
    series = {"ok": [(p.seconds, p.ok) for p in summary.commits],
              "failed": [(p.seconds, p.failed) for p in summary.commits]}
    parts.append(svg.cumulative_plot(series, "rows committed over time"))
    parts.append(f'<p class="note">{summary.ok:,} images and {summary.failed:,} failed rows committed over '
                 f"{_e(svg.duration(span))}, from {_e(utc(summary.first_commit))}. Each step is a chunk's "
                 "commit; gaps are time between runs.</p></section>")
    return "".join(parts)


def _time_split(summary: OutputSummary) -> str:
    parts = ['<section id="time"><h2>Where the time went</h2>']
    if not summary.ok:
        parts.append('<p class="sub">No images yet.</p></section>')
        return "".join(parts)
    bars = [(part, summary.time_totals[part] / summary.ok) for part in PARTS]
    parts.append(svg.bar_plot(bars, "mean seconds per image, by part", unit="s"))
    total = sum(summary.time_totals.values())
    parts.append(f'<p class="note">Mean seconds per image over the {summary.ok:,} ok rows (each row carries its '
                 f"share of its batch's time; {total:,.1f} s in all). "
                 + "; ".join(f"<b>{_e(part)}</b>: {_e(PART_MEANING[part])}" for part in PARTS)
                 + ".</p></section>")
    return "".join(parts)


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f} s"


def _runs(summary: OutputSummary) -> str:
    parts = ['<section id="runs"><h2>Runs</h2>']
    if not summary.runs:
        parts.append('<p class="sub">No run records (runs/*.json): this output was written before synth kept '
                     "them, or no run has started yet.</p></section>")
        return "".join(parts)
    head = ["started", "run", "status", "exit", "retry failed", "ok", "failed", "skipped", "wall", "first image",
            "images/s", "host", "ray job", "synth", "message"]
    numeric = {"exit", "ok", "failed", "skipped", "wall", "first image", "images/s"}
    parts.append("<table><thead><tr>" + "".join(
        f'<th class="num">{h}</th>' if h in numeric else f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
    for run in reversed(summary.runs):  # newest first
        skipped = "" if run.rows_skipped is None else f"{run.rows_skipped:,}"
        if run.rows_skipped_failed:
            skipped += f" ({run.rows_skipped_failed:,} failed)"
        cells = [
            (_e((run.started_at or "").replace("T", " ")), "nowrap"),
            (f"<code>{_e(run.run_id or run.name)}</code>", ""),
            (_e(run.status_text), f"nowrap status-{_e(run.status)}"),
            (_e(run.exit_code), "num"),
            ({True: "yes", False: "no", None: ""}[run.retry_failed], ""),
            (_e("" if run.rows_ok is None else f"{run.rows_ok:,}"), "num"),
            (_e("" if run.rows_failed is None else f"{run.rows_failed:,}"), "num"),
            (_e(skipped), "num"),
            (_e(_seconds(run.wall_seconds)), "num"),
            (_e(_seconds(run.first_image_seconds)), "num"),
            (_e("" if run.images_per_second is None else f"{run.images_per_second:.3g}"), "num"),
            (_e(run.host), "nowrap"),
            (f"<code>{_e(run.ray_job_id)}</code>" if run.ray_job_id else "", ""),
            (_e(run.synth_version), ""),
            (_e(run.message), "msg"),
        ]
        parts.append("<tr>" + "".join(f'<td class="{kind}">{text}</td>' if kind else f"<td>{text}</td>"
                                      for text, kind in cells) + "</tr>")
    parts.append("</tbody></table>")
    if summary.runs_total > len(summary.runs):
        parts.append(f'<p class="note">The newest {len(summary.runs):,} of {summary.runs_total:,} runs.</p>')
    parts.append('<p class="note">"running (or killed)": the run has not ended, or it was killed before it could '
                 "write its end.</p></section>")
    return "".join(parts)


def render(summary: OutputSummary, thumbs: dict[str, Thumbnail | str]) -> str:
    """The whole page as a string."""
    title = f"{summary.name or 'synth output'}: synth report"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
        + _header(summary)
        + _contact_sheet(summary, thumbs)
        + _failures(summary)
        + _commits(summary)
        + _time_split(summary)
        + _runs(summary)
        + "</main></body></html>\n"
    )
