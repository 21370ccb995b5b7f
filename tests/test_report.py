"""`synth report`: the page about a real job's output, read back as data, as HTML and in a
real headless Chromium."""

import hashlib
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import job, read_metadata, stage, upload_folder, write_table

from pipeline.report import build_report, write_report
from pipeline.report.data import job_output_options, summarise
from pipeline.report.runs import parse_run, read_runs
from pipeline.runner import run_job
from pipeline.spec import SpecError, parse_spec

pytestmark = pytest.mark.timeout(300)

SCRIPT_PROMPT = "<script>document.title='pwned'</script> a red circle"
STEPS_ERROR = "steps: 0 must be between 1 and 1000"

# The run's own record is the runner's; a later run that never ended (killed) is written
# here in the same shape, with a key from a later version.
RUNNING = {
    "run_id": "77aa01bc", "started_at": "2099-12-31T00:00:00.000Z", "ended_at": None, "status": "running",
    "exit_code": None, "message": None, "wall_seconds": None, "first_image_seconds": None,
    "rows": {"ok": 0, "failed": 0, "skipped": 8, "skipped_failed": 3}, "images_per_second": None,
    "retry_failed": True, "spec_sha256": "ab12", "synth_version": "0.1.0", "ray_job_id": "02000000",
    "host": "host-b", "a_key_from_a_later_version": {"x": 1},
}


@pytest.fixture(scope="module")
def output(ray_cluster, tiny, tmp_path_factory) -> Path:
    """A real txt2img job's output: 8 rows, 3 of them failed (two with one message), one
    prompt that is a script, and two run records."""
    tmp = tmp_path_factory.mktemp("report")
    ids = [f"row-{i}" for i in range(8)]
    prompts = ["a blue square", SCRIPT_PROMPT, "a green circle", "", "a red square", "x", "y", "a white circle"]
    steps = [None, None, None, None, None, 0, 0, None]
    table = write_table(tmp / "t.parquet", {"id": ids, "prompt": prompts, "steps": steps})
    out = tmp / "out"
    raw = job(table, str(out), [stage("txt2img", tiny["txt2img"])], input={"path": table, "id_column": "id"},
              max_failed_fraction=0.5)
    summary = run_job(parse_spec(raw))
    assert (summary.rows_ok, summary.rows_failed) == (5, 3)
    (out / "runs" / "20991231T000000.000Z-77aa01bc.json").write_text(json.dumps(RUNNING))
    (out / "runs" / ".20991231T150000Z-0000.json.tmp-12").write_text("{")  # a killed atomic write
    return out


def first_run_id(output: Path) -> str:
    """The run id of the runner's own record of the fixture's job."""
    from pipeline.io.commit_log import CommitLog

    return CommitLog(str(output)).runs()[0]["run_id"]


def test_summary_counts_groups_commits_and_runs(output):
    rows = read_metadata(str(output))
    summary = summarise(str(output), samples=3)
    assert summary.name == "test" and summary.job["stages"][0]["steps"] == 2
    assert (summary.ok, summary.failed, summary.rows) == (5, 3, 8)
    assert summary.metadata_files == 4  # 8 rows in chunks of batch_size 2
    [chain] = summary.chains
    assert chain.chain == "txt2img" and chain.models == [rows[0]["models"][0]] and (chain.ok, chain.failed) == (5, 3)

    # the sample: the 3 ok rows whose image keys come first, listed by id, with their prompts
    ok = {row["id"]: row for row in rows if row["status"] == "ok"}
    first = sorted(ok, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:3]
    assert [s.id for s in chain.samples] == sorted(first)
    for sample in chain.samples:
        assert ok[sample.id]["image_uri"] == str(output / sample.key)
        assert sample.prompt == ok[sample.id]["prompt"]

    # failed rows grouped by exact message, the largest group first
    assert [(g.message, g.count, g.ids) for g in summary.errors] == [
        (STEPS_ERROR, 2, ["row-5", "row-6"]),
        ("prompt: the prompt is empty", 1, ["row-3"]),
    ]

    # committed over time: a step per chunk, cumulative, from the metadata's commit times
    times = sorted({row["committed_at"] for row in rows})
    assert summary.first_commit == times[0] and summary.last_commit == times[-1]
    expected = [(0.0, 0, 0)]
    for when in times:
        done = [row for row in rows if row["committed_at"] <= when]
        ok_rows = sum(row["status"] == "ok" for row in done)
        expected.append((when - times[0], ok_rows, len(done) - ok_rows))
    assert [(p.seconds, p.ok, p.failed) for p in summary.commits] == expected

    # the time split over the ok rows: the stage parts add up to generation_seconds
    totals = summary.time_totals
    generation = sum(r["generation_seconds"] for r in ok.values())
    assert totals["text encode"] + totals["denoise"] + totals["vae"] == pytest.approx(generation)
    assert totals["prepare"] == pytest.approx(sum(r["prepare_seconds"] for r in ok.values()))
    assert totals["denoise"] > 0 and totals["vae"] > 0 and totals["write"] > 0

    # run records, oldest first; the dot-file of an interrupted write is not one
    assert summary.runs_total == 2
    finished, running = summary.runs
    assert (finished.status, finished.exit_code, finished.rows_ok, finished.rows_failed) == ("succeeded", 0, 5, 3)
    assert (running.status, running.status_text, running.ended_at, running.rows_skipped_failed) == (
        "running", "running (or killed)", None, 3)


def test_run_records_tolerate_missing_folders_odd_values_and_broken_files(tmp_path):
    from pipeline.io.commit_log import CommitLog

    log = CommitLog(str(tmp_path))
    assert read_runs(log) == ([], 0)  # an older output: no runs/ folder
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "20261201T000000Z-broken.json").write_text('{"run_id": ')
    (tmp_path / "runs" / "20261202T000000Z-odd.json").write_text(
        json.dumps({"run_id": 7, "status": "error", "exit_code": 2.0, "wall_seconds": "long", "rows": [1],
                    "message": "stages.0.model: not found", "new": True}))
    (broken, odd), total = read_runs(log)
    assert total == 2
    assert broken.status == "unreadable" and "cannot read this record" in broken.message
    assert (odd.run_id, odd.exit_code, odd.wall_seconds, odd.rows_ok, odd.message) == (
        "7", 2, None, None, "stages.0.model: not found")
    assert parse_run([], "x.json").status == "unreadable"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_page_escapes_user_text_and_fetches_nothing(output):
    page = build_report(str(output))
    parser = _Tags()
    parser.feed(page)
    tags = parser.tags
    assert not [tag for tag, _ in tags if tag in ("script", "iframe", "object", "embed", "link", "base")]
    assert "<script>document" not in page and "&lt;script&gt;document.title=&#x27;pwned&#x27;" in page
    # every reference is inline: data URIs only, and no URL to fetch anywhere in the page
    references = [attrs[name] for _, attrs in tags for name in ("src", "href", "xlink:href") if name in attrs]
    assert references and all(ref.startswith("data:image/") for ref in references)
    assert "http://" not in page and "https://" not in page and "url(" not in page
    assert "default-src 'none'" in page  # and the browser would refuse any fetch anyway
    # the five ok rows' thumbnails, the two plots, and both run records
    assert sum(tag == "img" for tag, _ in tags) == 5
    assert sum(tag == "svg" for tag, _ in tags) == 2
    assert first_run_id(output) in page and "running (or killed)" in page and STEPS_ERROR in page


def synthetic_output(path: Path, rows: int) -> None:
    """An output's metadata without images: every row failed with its own message, one
    commit time per 4 rows, and one very long prompt per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.io.writer import metadata_schema

    (path / "metadata").mkdir(parents=True)
    (path / "job.json").write_text(json.dumps({"name": "big", "stages": [{"kind": "txt2img", "model": "m"}]}))
    for start in range(0, rows, 1000):
        count = min(1000, rows - start)
        columns = {
            "id": [f"r{start + i}" for i in range(count)],
            "status": ["failed"] * count,
            "error": [f"image: cannot fetch s3://b/img-{start + i}.png" for i in range(count)],
            "prompt": ["p" * 500] * count,
            "stage_chain": ["txt2img"] * count,
            "models": [["m"]] * count,
            "committed_at": [1.8e9 + (start + i) // 4 for i in range(count)],
        }
        schema = metadata_schema()
        table = pa.Table.from_pydict({name: columns.get(name, [None] * count) for name in schema.names}, schema=schema)
        pq.write_table(table, path / "metadata" / f"part-{start:08d}.parquet")


def test_page_size_does_not_grow_with_rows(tmp_path):
    synthetic_output(tmp_path / "small", 10_000)
    synthetic_output(tmp_path / "large", 40_000)
    small, large = build_report(str(tmp_path / "small")), build_report(str(tmp_path / "large"))
    # 40,000 distinct messages, 10,000 commit times: 50 groups shown, the plot downsampled
    assert "40,000" in large and "39,950 more messages (39,950 rows)" in large
    assert abs(len(large) - len(small)) < 0.02 * len(small) and len(large) < 100_000


def test_report_reads_an_s3_output(output, s3):
    bucket, options, fs = s3
    upload_folder(fs, output, f"{bucket}/out")
    page = build_report(f"{bucket}/out", options, samples=2)
    assert page.count("<img ") == 2 and STEPS_ERROR in page and first_run_id(output) in page


def test_output_options_merge_like_the_spec():
    spec = {"storage_options": {"client_kwargs": {"endpoint_url": "e"}, "anon": False},
            "output": {"storage_options": {"client_kwargs": {"region_name": "r"}}}}
    assert job_output_options(spec) == {"client_kwargs": {"endpoint_url": "e", "region_name": "r"}, "anon": False}
    assert job_output_options(None) == {}


def synth(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, timeout=120)


def test_cli_writes_the_report_into_the_output_or_to_out(output, tmp_path):
    result = synth("report", str(output), "--samples", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"synth: report written to {output / 'report.html'}"
    assert (output / "report.html").read_text().count("<img ") == 2
    result = synth("report", str(output), "--out", str(tmp_path / "r" / "page.html"), "--samples", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "<img " not in (tmp_path / "r" / "page.html").read_text()


def test_cli_refuses_a_folder_without_synth_output(tmp_path):
    result = synth("report", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"synth: error: {tmp_path} holds no synth output: no job.json and no metadata/*.parquet")
    result = synth("report", str(tmp_path), "--storage-options", "[1]")
    assert result.returncode == 2 and "--storage-options: expected a JSON object" in result.stderr
    with pytest.raises(SpecError, match="holds no synth output"):
        write_report(str(tmp_path / "nothing"))




def test_report_in_a_real_browser(chromium, output, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = tmp_path / "report.html"
    page.write_text(build_report(str(output)))
    browser.get(page.as_uri())
    assert browser.title == "test: synth report"  # the script prompt did not run

    # every thumbnail decoded
    images = browser.find_elements(By.CSS_SELECTOR, "#samples img")
    assert len(images) == 5
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
    captions = [caption.text for caption in browser.find_elements(By.CSS_SELECTOR, "#samples figcaption")]
    assert any("<script>document.title" in caption for caption in captions)  # shown as text

    # both plots are laid out with a size and hold their marks
    for section, marks, expected in (("#commits", "polyline", 2), ("#time", "rect.bar", 7)):
        plot = browser.find_element(By.CSS_SELECTOR, f"{section} svg")
        box = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height]", plot)
        assert box[0] > 100 and box[1] > 100, (section, box)
        assert len(plot.find_elements(By.CSS_SELECTOR, marks)) == expected, section

    # the failed rows, grouped
    failures = browser.find_element(By.CSS_SELECTOR, "#failures table").text
    assert STEPS_ERROR in failures and "row-5, row-6" in failures and "prompt: the prompt is empty" in failures
    runs = browser.find_element(By.CSS_SELECTOR, "#runs table").text
    assert first_run_id(output) in runs and "running (or killed)" in runs

    # nothing was blocked by the page's CSP (which would mean something tried to load or run)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]

    # a screenshot of the whole page, to look at (the window is taller than its viewport)
    for _ in range(2):
        extra = browser.execute_script("return document.documentElement.scrollHeight - window.innerHeight")
        browser.set_window_size(1280, browser.get_window_size()["height"] + extra)
    assert browser.save_screenshot(str(tmp_path / "report.png"))


def test_out_never_replaces_a_device_a_link_or_the_outputs_own_records(output, tmp_path):
    link = tmp_path / "link.html"
    link.symlink_to(tmp_path / "elsewhere.html")
    for out, problem in [("/dev/full", "not a regular file"), (str(link), "not a regular file"),
                         (str(tmp_path), "not a regular file"),
                         (str(output / "metadata" / "part-zzz.parquet"), "inside the output's metadata/ folder")]:
        with pytest.raises(SpecError, match=problem):
            write_report(str(output), out)
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full") and link.is_symlink()
