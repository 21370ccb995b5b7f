"""Scheduled runs: a cron expression in a time zone, and a job-spec template rendered for a date.

A schedule names the date each firing is for (the local date of the cron firing in the
schedule's time zone) and renders the job for that date. The output path must depend on the
date, so one date always targets one output partition: a rerun or a second firing of the
same date resumes that partition (one writer at a time, through the output's lease) instead
of duplicating it, and a backfill of a range runs each date once.
"""

from __future__ import annotations

import datetime as dt
import string
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pipeline.spec import JobSpec, SpecError, parse_spec, read_document, validate_document
from pipeline.strict import Strict

# The placeholders a job template may use, with an example for 2026-11-23.
PLACEHOLDERS = {
    "date": "2026-11-23",
    "date_compact": "20261123",
    "year": "2026",
    "month": "11",
    "day": "23",
    "schedule": "the schedule's name",
    "run_id": "<schedule>-20261123: one id per scheduled date, the same on every rerun",
}
_DATED = ("date", "date_compact", "day", "run_id")
# A backfill past this many dates is a typo in --from/--to more often than a plan.
MAX_BACKFILL_DATES = 366


class ScheduleSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="The schedule's name, in run ids.")
    cron: str = Field(description="When it fires: a five-field cron expression, e.g. '0 2 * * *' for 02:00 daily.")
    timezone: str = Field("UTC", description="IANA time zone the cron expression and the dates are read in.")
    wait_for_lease_s: float = Field(
        3600, ge=0,
        description="When the same date is already being written (a firing twice, a manual rerun during a "
        "scheduled one), wait this long for that run to end, then resume what it left; past it, exit 2.",
    )
    job: dict[str, Any] = Field(
        description="A job spec whose strings may use {date}, {date_compact}, {year}, {month}, {day}, "
        "{schedule} and {run_id}; output.path must use the date, so each date has its own partition.",
    )

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a five-field cron expression (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        _zone(value)
        return value

    def zone(self):
        return _zone(self.timezone)


def _zone(name: str):
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone, e.g. UTC or Europe/Berlin") from None


def load_schedule(path: str | Path) -> ScheduleSpec:
    schedule = validate_document(ScheduleSpec, read_document(path, "schedule"), str(path))
    output = schedule.job.get("output")
    output_path = output.get("path") if isinstance(output, dict) else None
    if not isinstance(output_path, str) or not set(_fields(output_path)) & set(_DATED):
        raise SpecError(
            f"{path}: job.output.path must contain {{date}} (or {{date_compact}}, {{run_id}}), so each scheduled "
            "date writes its own partition and a rerun of a date resumes it instead of mixing dates"
        )
    return schedule


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise SpecError(f"{text!r} is not a date as YYYY-MM-DD") from None


def _fields(template: str) -> list[str]:
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise SpecError(f"{template!r}: {error} (write a literal brace as {{{{ or }}}})") from None


def values(schedule: ScheduleSpec, date: dt.date) -> dict[str, str]:
    compact = date.strftime("%Y%m%d")
    return {
        "date": date.isoformat(), "date_compact": compact, "year": f"{date.year:04d}", "month": f"{date.month:02d}",
        "day": f"{date.day:02d}", "schedule": schedule.name, "run_id": f"{schedule.name}-{compact}",
    }


def _fill(value: Any, known: dict[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, known, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, known, f"{where}.{index}") for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value
    for name in _fields(value):
        if name not in known:
            raise SpecError(f"{where}: unknown placeholder {{{name}}}; a template may use "
                            + ", ".join(f"{{{key}}}" for key in PLACEHOLDERS))
    return value.format_map(known)


def render(schedule: ScheduleSpec, date: dt.date, overrides: list[str] | None = None) -> JobSpec:
    """The concrete job for one scheduled date (the same spec every time for that date)."""
    from pipeline.spec import apply_overrides

    raw = _fill(schedule.job, values(schedule, date), "job")
    if overrides:
        raw = apply_overrides(raw, overrides)
    return parse_spec(raw, source=f"schedule {schedule.name} for {date.isoformat()}")


def latest_date(schedule: ScheduleSpec, now: dt.datetime | None = None) -> dt.date:
    """The date of the latest firing at or before now, in the schedule's time zone: what a
    run started by cron (or a little late) is for."""
    from croniter import croniter

    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone(schedule.zone())
    fired = croniter(schedule.cron, now + dt.timedelta(seconds=1)).get_prev(dt.datetime)
    return fired.date()


def dates_between(schedule: ScheduleSpec, first: dt.date, last: dt.date) -> list[dt.date]:
    """Each date in [first, last] on which the schedule fires, once however often it fires
    that day: a backfill's dates."""
    from croniter import croniter

    if last < first:
        raise SpecError(f"--to {last} is before --from {first}")
    if (last - first).days >= MAX_BACKFILL_DATES:
        raise SpecError(f"--from {first} --to {last} spans more than {MAX_BACKFILL_DATES} days; backfill in parts")
    zone = schedule.zone()
    start = dt.datetime.combine(first, dt.time(), zone) - dt.timedelta(seconds=1)
    end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), zone)
    firings = croniter(schedule.cron, start)
    dates: list[dt.date] = []
    while (fired := firings.get_next(dt.datetime)) < end:
        day = fired.astimezone(zone).date()
        if not dates or dates[-1] != day:
            dates.append(day)
        if len(dates) > MAX_BACKFILL_DATES:
            break
    return dates
