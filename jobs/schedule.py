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
# Output paths that name one date: any of these, or all of year, month and day together.
_DATED = ("date", "date_compact", "run_id")
_DATE_PARTS = {"year", "month", "day"}
# How far ahead a cron expression must fire at least once (30 February never does).
_FIRES_WITHIN_DAYS = 4 * 366
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
        start = dt.datetime(2000, 1, 1)
        try:
            fires = croniter(value, start).get_next(dt.datetime) < start + dt.timedelta(days=_FIRES_WITHIN_DAYS)
        except Exception:  # croniter's "failed to find next date"
            fires = False
        if not fires:
            raise ValueError(f"{value!r} never fires (a date that does not exist, such as 30 February?)")
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
    used = set(_fields(output_path)) if isinstance(output_path, str) else set()
    if not (used & set(_DATED) or _DATE_PARTS <= used):
        raise SpecError(
            f"{path}: job.output.path must contain {{date}} (or {{date_compact}}, {{run_id}}, or all of {{year}}, "
            "{month} and {day}), so each scheduled date writes its own partition and a rerun of a date resumes "
            "it instead of mixing dates"
        )
    return schedule


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise SpecError(f"{text!r} is not a date as YYYY-MM-DD") from None


def _fields(template: str) -> list[str]:
    """The placeholders a template uses. Format specs and conversions are refused: a
    placeholder is replaced by its value as it is ({date:>99999999} would pad without end)."""
    try:
        parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as error:
        raise SpecError(f"{template!r}: {error} (write a literal brace as {{{{ or }}}})") from None
    for name, spec, conversion in parsed:
        if spec or conversion:
            raise SpecError(f"{template!r}: write {{{name}}} without a format or conversion")
    return [name for name, _, _ in parsed]


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
    # Day by day (at most MAX_BACKFILL_DATES questions), not firing by firing: an
    # every-minute schedule fires half a million times a year.
    zone = schedule.zone()
    dates: list[dt.date] = []
    day = first
    while day <= last:
        start = dt.datetime.combine(day, dt.time(), zone)
        following = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone)
        if croniter(schedule.cron, start - dt.timedelta(seconds=1)).get_next(dt.datetime) < following:
            dates.append(day)
        day += dt.timedelta(days=1)
    return dates
