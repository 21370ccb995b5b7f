"""Schedules: which dates a schedule fires on, and the job it renders for a date (no Ray)."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jobs.schedule import dates_between, latest_date, load_schedule, render
from pipeline.spec import SpecError

EXAMPLE = Path(__file__).parent.parent / "jobs" / "schedules" / "nightly.yaml"


def write(tmp_path, **fields) -> Path:
    schedule = {
        "name": "nightly", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
        "job": {"name": "nightly-{date_compact}", "input": {"path": "s3://b/prompts/date={date}/"},
                "stages": [{"kind": "txt2img", "model": "synth:shapes", "negative_prompt": "run {run_id}"}],
                "output": {"path": "s3://b/generated/date={date}"}},
    }
    schedule.update(fields)
    path = tmp_path / "schedule.yaml"
    path.write_text(yaml.safe_dump(schedule))
    return path


def test_a_date_renders_its_own_partition_the_same_every_time(tmp_path):
    schedule = load_schedule(write(tmp_path))
    spec = render(schedule, dt.date(2026, 11, 23))
    assert spec.name == "nightly-20261123"
    assert (spec.input.path, spec.output.path) == ("s3://b/prompts/date=2026-11-23/", "s3://b/generated/date=2026-11-23")
    assert spec.stages[0].negative_prompt == "run nightly-20261123"
    assert render(schedule, dt.date(2026, 11, 23)) == spec  # a rerun targets the same partition
    assert render(schedule, dt.date(2026, 11, 24)).output.path.endswith("date=2026-11-24")


def test_the_date_is_the_latest_firing_in_the_schedules_time_zone(tmp_path):
    schedule = load_schedule(write(tmp_path))  # 02:00 Berlin = 01:00 UTC in November
    utc = dt.timezone.utc
    assert latest_date(schedule, dt.datetime(2026, 11, 23, 1, 0, 0, tzinfo=utc)) == dt.date(2026, 11, 23)
    assert latest_date(schedule, dt.datetime(2026, 11, 23, 0, 59, 0, tzinfo=utc)) == dt.date(2026, 11, 22)


def test_a_backfill_has_each_firing_date_once(tmp_path):
    hourly = load_schedule(write(tmp_path, cron="0 * * * *"))
    assert dates_between(hourly, dt.date(2026, 11, 1), dt.date(2026, 11, 3)) == [
        dt.date(2026, 11, 1), dt.date(2026, 11, 2), dt.date(2026, 11, 3)]
    mondays = load_schedule(write(tmp_path, cron="30 3 * * MON"))
    assert dates_between(mondays, dt.date(2026, 11, 1), dt.date(2026, 11, 30)) == [
        dt.date(2026, 11, day) for day in (2, 9, 16, 23, 30)]
    with pytest.raises(SpecError, match="before"):
        dates_between(hourly, dt.date(2026, 11, 3), dt.date(2026, 11, 1))
    every_minute = load_schedule(write(tmp_path, cron="* * * * *"))  # a date per day, not per firing
    assert len(dates_between(every_minute, dt.date(2026, 1, 1), dt.date(2026, 12, 31))) == 365
    parts = load_schedule(write(tmp_path, job={**every_minute.job, "output": {"path": "s3://b/{year}/{month}/{day}"}}))
    assert render(parts, dt.date(2026, 11, 23)).output.path == "s3://b/2026/11/23"
    with pytest.raises(SpecError, match="366"):
        dates_between(hourly, dt.date(2020, 1, 1), dt.date(2026, 1, 1))


@pytest.mark.parametrize("fields, message", [
    ({"cron": "0 25 * * *"}, "cron"),
    ({"cron": "@daily"}, "cron"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"crn": "0 2 * * *"}, "crn"),
    ({"job": {"name": "x", "input": {"path": "a"}, "stages": [], "output": {"path": "s3://b/out"}}}, r"\{date\}"),
    # the day of the month alone: 23 November and 23 December would share a partition
    ({"job": {"name": "x", "input": {"path": "a"}, "stages": [], "output": {"path": "s3://b/{day}"}}}, r"\{date\}"),
    ({"job": {"name": "x", "input": {"path": "a"}, "stages": [], "output": {"path": "s3://b/{date:>999999}"}}},
     "without a format"),
    ({"cron": "0 0 30 2 *"}, "never fires"),
])
def test_a_bad_schedule_is_named(tmp_path, fields, message):
    with pytest.raises(SpecError, match=message):
        load_schedule(write(tmp_path, **fields))


def test_an_unknown_placeholder_or_an_invalid_rendered_job_is_named(tmp_path):
    schedule = load_schedule(write(tmp_path))
    schedule.job["input"]["path"] = "s3://b/{dat}/"
    with pytest.raises(SpecError, match=r"job.input.path: unknown placeholder \{dat\}"):
        render(schedule, dt.date(2026, 11, 23))
    schedule = load_schedule(write(tmp_path))
    schedule.job["stages"][0]["steps"] = 0
    with pytest.raises(SpecError, match="stages.0.steps"):
        render(schedule, dt.date(2026, 11, 23))


def test_render_prints_the_example_schedules_job(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipeline", "schedule", "render", str(EXAMPLE), "--date",
                             "2026-11-23"], capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)
    assert spec["output"]["path"].endswith("date=2026-11-23") and "2026-11-23" in spec["input"]["path"]
    bad = subprocess.run([sys.executable, "-m", "pipeline", "schedule", "run", str(EXAMPLE), "--date", "2026-11-23",
                          "--from", "2026-11-01", "--to", "2026-11-02"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not both" in bad.stderr
