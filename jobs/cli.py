"""The cluster commands of `synth`: submit, status, logs, stop, schedule render|run."""

from __future__ import annotations

import json
import sys

from jobs.submit import RunOptions


def _address(command) -> None:
    command.add_argument(
        "--address", default=None, metavar="URL",
        help="the cluster's Ray Jobs API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)",
    )


def _run_flags(command, wait_for_lease: bool = True) -> None:
    command.add_argument("--retry-failed", action="store_true", help="also rerun the rows that failed last time")
    command.add_argument("--allow-model-change", action="store_true",
                         help="resume although a stage's model now resolves to another revision (see synth run)")
    if wait_for_lease:
        command.add_argument("--wait-for-lease", type=float, default=0.0, metavar="SECONDS",
                             help="while another run writes to the same output, wait up to this long (default 0)")


def _submit_flags(command) -> None:
    _address(command)
    command.add_argument("--wait", action="store_true",
                         help="follow the job's logs and exit as `synth run` would: 0, 1 too many failed rows, "
                         "2 invalid job")
    command.add_argument("--skip-preflight", action="store_true",
                         help="submit without checking input, models and output from this machine first (for "
                         "storage only the cluster can reach)")


def add_commands(commands, with_spec) -> None:
    """Add the cluster commands to `synth`'s subcommands (with_spec: a parser taking a job spec)."""
    submit = with_spec("submit", "submit a job to a Ray cluster through the Jobs API; prints the Ray job id")
    _submit_flags(submit)
    _run_flags(submit)
    submit.set_defaults(func=cmd_submit)
    for name, help_text, func in (
        ("status", "a submitted job's state", cmd_status),
        ("logs", "a submitted job's logs so far (--follow: until it ends)", cmd_logs),
        ("stop", "stop a submitted job; it records the stop and a rerun resumes", cmd_stop),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("job_id", help="the Ray job id `synth submit` printed")
        _address(command)
        if name == "logs":
            command.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        command.set_defaults(func=func)

    schedule = commands.add_parser("schedule", help="scheduled runs: render or run a schedule's job for a date")
    actions = schedule.add_subparsers(dest="action", required=True)
    render = actions.add_parser("render", help="print the job spec a schedule runs for a date")
    render.add_argument("schedule", help="schedule spec, YAML or JSON (see jobs/schedules/)")
    render.add_argument("--date", default=None, help="YYYY-MM-DD (default: the date of the latest firing)")
    render.set_defaults(func=cmd_schedule_render)
    run = actions.add_parser("run", help="run a schedule's job for a date or a range of dates; with --address, "
                          "submit it to that cluster instead")
    run.add_argument("schedule", help="schedule spec, YAML or JSON (see jobs/schedules/)")
    run.add_argument("--date", default=None, help="YYYY-MM-DD (default: the date of the latest firing)")
    run.add_argument("--from", dest="first", default=None, metavar="DATE", help="backfill: the first date")
    run.add_argument("--to", dest="last", default=None, metavar="DATE", help="backfill: the last date")
    _submit_flags(run)
    _run_flags(run, wait_for_lease=False)
    run.set_defaults(func=cmd_schedule_run)


def _options(args, wait_for_lease_s: float) -> RunOptions:
    return RunOptions(args.retry_failed, args.allow_model_change, wait_for_lease_s)


def cmd_submit(args) -> int:
    from jobs.submit import submit
    from pipeline.cli import _spec

    job_id = submit(_spec(args), args.address, _options(args, args.wait_for_lease), not args.skip_preflight,
                    args.log_level)
    print(job_id, flush=True)
    return _follow(job_id, args.address) if args.wait else 0


def _follow(job_id: str, address: str | None) -> int:
    """Follow a submitted job; Ctrl-C stops the following, not the job (`synth stop` does)."""
    from jobs.submit import STOPPED_EXIT_CODE, follow

    try:
        return follow(job_id, address)
    except KeyboardInterrupt:
        print(f"synth: no longer following Ray job {job_id}, which goes on; `synth stop {job_id}` stops it",
              file=sys.stderr)
        return STOPPED_EXIT_CODE


def cmd_status(args) -> int:
    from jobs.submit import status_line

    print(status_line(args.job_id, args.address))
    return 0


def cmd_logs(args) -> int:
    from jobs.submit import logs

    if args.follow:
        return _follow(args.job_id, args.address)
    sys.stdout.write(logs(args.job_id, args.address))
    return 0


def cmd_stop(args) -> int:
    from jobs.submit import stop

    stopped = stop(args.job_id, args.address)
    print(f"synth: {args.job_id} {'asked to stop' if stopped else 'had already ended'}")
    return 0


def _dates(args, schedule):
    from jobs.schedule import dates_between, latest_date, parse_date
    from pipeline.spec import SpecError

    if args.date and (args.first or args.last):
        raise SpecError("give --date, or --from and --to, not both")
    if args.first or args.last:
        if not (args.first and args.last):
            raise SpecError("a backfill needs both --from and --to")
        return dates_between(schedule, parse_date(args.first), parse_date(args.last))
    return [parse_date(args.date) if args.date else latest_date(schedule)]


def cmd_schedule_render(args) -> int:
    from jobs.schedule import latest_date, load_schedule, parse_date, render
    from pipeline.spec import resolved_dict

    schedule = load_schedule(args.schedule)
    date = parse_date(args.date) if args.date else latest_date(schedule)
    print(json.dumps(resolved_dict(render(schedule, date)), indent=2))
    return 0


def cmd_schedule_run(args) -> int:
    """Each date once, in order; a date that fails does not stop the others. Exit code: the
    worst of the dates'."""
    from jobs.schedule import load_schedule, render
    from jobs.submit import submit
    from pipeline.cli import _run

    schedule = load_schedule(args.schedule)
    dates = _dates(args, schedule)
    options = _options(args, schedule.wait_for_lease_s)
    codes = []
    for date in dates:
        spec = render(schedule, date)
        print(f"synth: schedule {schedule.name}, date {date}: job {spec.name} into {spec.output.path}", flush=True)
        if args.address is None:  # on the cluster at RAY_ADDRESS, or a local Ray, as `synth run`
            codes.append(_run(spec, options.retry_failed, options.allow_model_change, options.wait_for_lease_s))
            continue
        job_id = submit(spec, args.address, options, not args.skip_preflight, args.log_level)
        print(f"synth: date {date}: Ray job {job_id}", flush=True)
        codes.append(_follow(job_id, args.address) if args.wait else 0)
    if len(dates) > 1:
        print(f"synth: {len(dates)} dates, {sum(1 for code in codes if code == 0)} succeeded", flush=True)
    return max(codes, default=0)
