"""The `synth` command. Imports stay light here: torch and diffusers load in the workers."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return value


def _spec(args):
    from pipeline.spec import load_spec

    return load_spec(args.job, args.set)


def cmd_validate(args) -> int:
    from pipeline.spec import resolved_dict

    print(json.dumps(resolved_dict(_spec(args)), indent=2))
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def _run(spec, retry_failed: bool = False, allow_model_change: bool = False, wait_for_lease_s: float = 0.0) -> int:
    from pipeline.runner import run_job

    summary = run_job(spec, retry_failed=retry_failed, allow_model_change=allow_model_change,
                      wait_for_lease_s=wait_for_lease_s)
    for example in summary.errors:
        print(f"synth: failed row {example}", file=sys.stderr)
    print(f"synth: {summary.line()}", flush=True)
    code = summary.exit_code(spec.max_failed_fraction)
    if code:
        failed = summary.rows_failed + summary.skipped_failed
        print(
            f"synth: {failed} of {summary.rows + summary.rows_skipped} committed rows failed "
            f"({summary.failed_share:.1%}), above max_failed_fraction {spec.max_failed_fraction:.1%}; "
            "see the metadata's error column, fix the inputs and run with --retry-failed",
            file=sys.stderr,
        )
    return code


def cmd_run(args) -> int:
    return _run(_spec(args), retry_failed=args.retry_failed, allow_model_change=args.allow_model_change,
                wait_for_lease_s=args.wait_for_lease)


def cmd_demo(args) -> int:
    from pipeline.demo import prepare_demo, write_grid
    from pipeline.ray_session import connect_ray

    spec = prepare_demo(args.out_dir)
    connect_ray(local=True)
    code = _run(spec)
    out = spec.output.path
    grid = write_grid(out, f"{args.out_dir}/grid.png")
    print(f"synth: images in {out}/images/, metadata in {out}/metadata/, the job spec in {out}/job.json")
    print(f"synth: all 36 prompts on one sheet (a row per colour): {grid}")
    return code


def cmd_serve(args) -> int:
    from serve.run import serve_forever

    return serve_forever(args.config, args.host, args.port)


def cmd_tiny_model(args) -> int:
    from pipeline.tiny_models import write_tiny_model

    try:
        path = write_tiny_model(args.out_dir, args.kind, args.family)
    except ValueError as error:  # a family without this kind
        raise SystemExit(f"synth: {error}") from None
    print(f"synth: tiny random-weight {args.kind} model{f' ({args.family})' if args.family else ''} written to {path}")
    return 0


def cmd_train_tiny(args) -> int:
    from pipeline.shapes.train import TrainConfig, train

    config = TrainConfig(seed=args.seed)
    for name in ("vae_steps", "unet_steps", "threads"):
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))
    train(args.out_dir, config)
    return 0


def cmd_eval_tiny(args) -> int:
    import tempfile
    from pathlib import Path

    from pipeline.shapes.evaluate import Evaluation, format_table
    from pipeline.shapes.train import write_untrained

    from pipeline.ray_session import connect_ray

    if not args.verbose:  # the jobs' progress; the results table is printed either way
        logging.getLogger("synth").setLevel(max(logging.WARNING, logging.getLogger("synth").level))
    connect_ray(local=True)
    with tempfile.TemporaryDirectory(prefix="synth-eval-") as tmp:
        work = Path(args.work_dir or tmp)
        columns = {}
        print(f"synth: evaluating {args.model} ({args.samples} samples per combination)...", flush=True)
        columns[args.model] = Evaluation(args.model, work / "model", args.samples).all()
        if not args.no_baseline:
            print("synth: evaluating the same architecture with random weights...", flush=True)
            baseline = write_untrained(work / "untrained-model")
            columns["random weights"] = Evaluation(str(baseline), work / "untrained", args.samples).all()
    print(format_table(columns))
    model_passes = all(result.passed for result in columns[args.model])
    # A check that random weights pass proves nothing: that is a failure of the checks.
    baseline_fails = all(not result.passed for result in columns.get("random weights", []))
    return 0 if model_passes and baseline_fails else 1


def cmd_bench(args) -> int:
    if args.plumbing:
        from benchmarks.plumbing import bench_plumbing

        bench_plumbing(args.rows, [int(v) for v in (args.sizes or "64,512").split(",")], args.formats.split(","),
                       args.layouts.split(","), args.out)
        return 0
    if args.control_plane:
        from benchmarks.control_plane import bench_control_plane

        sizes = [int(float(v)) for v in (args.sizes or "1e4,1e5,1e6,1e7").split(",")]
        bench_control_plane(sizes, args.resume_rows, args.out)
        return 0
    if args.serve:
        from benchmarks.serve_bench import bench_serve

        levels = tuple(int(level) for level in args.concurrency.split(","))
        bench_serve(args.url, levels, args.requests_per_thread, os.environ.get("SYNTH_API_KEY"), args.out)
        return 0
    from benchmarks.architectures import FLOPS, SETTINGS
    from benchmarks.harness import Workload, bench

    size = args.size or (64 if args.profile == "tiny" else FLOPS[args.profile]["size"])
    settings = {"steps": 8, "guidance_scale": 7.5, **SETTINGS.get(args.profile, {})}  # the command line wins
    steps = settings["steps"] if args.steps is None else args.steps
    guidance = settings["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    work = Workload(
        profile=args.profile, rows=args.rows, batch_size=args.batch_size, steps=steps, width=size,
        height=size, guidance_scale=guidance, image_format=args.format, peak_tflops=args.peak_tflops,
    )
    bench(work, out=args.out)
    return 0


def _samples(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{value} is not between 0 and 1000")
    return value


def cmd_report(args) -> int:
    from pipeline.report import parse_options, write_report
    from pipeline.spec import SpecError

    try:
        out = write_report(args.output_path, args.out, parse_options(args.storage_options), args.samples)
    except OSError as error:  # unreadable output, unwritable --out: one line, not a traceback
        raise SpecError(f"report on {args.output_path}: {error}") from None
    print(f"synth: report written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline.tiny_models import KINDS, TINY_FAMILIES

    parser = argparse.ArgumentParser(prog="synth", description="Ray-distributed batch image generation.")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="how much synth says while it works (default: info)")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_spec(name: str, help_text: str):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("job", help="job spec, YAML or JSON")
        command.add_argument(
            "--set", action="append", default=[], metavar="PATH=VALUE", help="override a field, e.g. stages.0.steps=2"
        )
        return command

    run = with_spec("run", "run a job on the cluster at RAY_ADDRESS, or on a local Ray; resumes where it stopped")
    run.add_argument("--retry-failed", action="store_true", help="also rerun the rows that failed last time")
    run.add_argument(
        "--allow-model-change", action="store_true",
        help="resume although a stage's model now resolves to another revision than the one its committed rows "
        "were made with (recorded in models.json and the run record); without it such a resume is refused",
    )
    run.add_argument(
        "--wait-for-lease", type=_non_negative, default=0.0, metavar="SECONDS",
        help="while another run writes to the same output, wait up to this long for it to end (default 0: exit 2 "
        "at once, naming that run)",
    )
    run.set_defaults(func=cmd_run)
    with_spec("validate", "print the resolved job spec, or name the invalid field").set_defaults(func=cmd_validate)
    demo = commands.add_parser("demo", help="the built-in shapes model draws 36 prompts on local Ray")
    demo.add_argument("out_dir")
    demo.set_defaults(func=cmd_demo)
    bench = commands.add_parser("bench", help="benchmark: bare diffusers loop vs the full pipeline, one run")
    bench.add_argument("--profile", choices=["tiny", "sd15", "sdxl", "sdxl-turbo", "flux-schnell", "stable-cascade"],
                       default="tiny", help="tiny: CPU profile; the others: full architectures from their published "
                       "configs, random weights (for a GPU)")
    bench.add_argument("--size", type=int, default=None, help="image side in px (default: the profile's)")
    bench.add_argument("--guidance-scale", type=float, default=None,
                       help="default 7.5 (sdxl-turbo, flux-schnell: 0; stable-cascade: 4, its prior's)")
    bench.add_argument("--peak-tflops", type=float, default=790.0, help="device peak, for share of peak")
    bench.add_argument("--rows", type=int, default=256)
    bench.add_argument("--batch-size", type=int, default=16)
    bench.add_argument("--steps", type=int, default=None,
                       help="default 8 (sdxl-turbo, flux-schnell: 4; stable-cascade: 20, its prior's)")
    bench.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    bench.add_argument("--out", default=None, help="write the results as JSON here")
    bench.add_argument("--serve", action="store_true",
                       help="load the Serve endpoint instead: images/s and p50/p99 latency at each concurrency, "
                       "and the batching gain (a local endpoint with the shapes model, or --url)")
    bench.add_argument("--url", default=None, help="--serve: an endpoint already running (its key in SYNTH_API_KEY)")
    bench.add_argument("--concurrency", default="1,4,16", help="--serve: concurrency levels (default 1,4,16)")
    bench.add_argument("--requests-per-thread", type=_positive, default=4,
                       help="--serve: requests each thread sends per level (default 4; at least 8 per level)")
    bench.add_argument("--plumbing", action="store_true",
                       help="PLUMBING ONLY, a constant-image generator replaces the model: rows/s per CPU core of "
                       "read, prepare, hand-off, encode, write and commit, per part (--rows, --sizes, --formats, "
                       "--layouts)")
    bench.add_argument("--control-plane", action="store_true",
                       help="what grows with the table on the driver (constant images): planning, time to first "
                       "commit, driver memory, resume on loopback S3 (--sizes rows, --resume-rows)")
    bench.add_argument("--sizes", default=None, help="--plumbing: image sides (default 64,512); --control-plane: "
                       "table rows (default 1e4,1e5,1e6,1e7)")
    bench.add_argument("--formats", default="jpeg,png", help="--plumbing: image formats")
    bench.add_argument("--layouts", default="files,webdataset", help="--plumbing: output layouts")
    bench.add_argument("--resume-rows", type=_positive, default=1_000_000,
                       help="--control-plane: committed rows of the resumed S3 output")
    bench.set_defaults(func=cmd_bench)
    train = commands.add_parser("train-tiny", help="train the built-in shapes model (about 40 min on 2 CPU cores)")
    train.add_argument("out_dir")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vae-steps", type=int, default=None, help="default: 1500")
    train.add_argument("--unet-steps", type=int, default=None, help="default: 6000")
    train.add_argument(
        "--threads", type=_positive, default=None, help="torch threads (default: the cores this process may use)"
    )
    train.set_defaults(func=cmd_train_tiny)
    evaluate = commands.add_parser("eval-tiny", help="semantic checks of a shapes model through the pipeline")
    evaluate.add_argument("--model", default="synth:shapes")
    evaluate.add_argument("--samples", type=int, default=2, choices=range(1, 101), metavar="1..100",
                          help="samples per colour-shape-background (36 of them)")
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the random-weight baseline column")
    evaluate.add_argument("--work-dir", default=None, help="keep the jobs' inputs and outputs here")
    evaluate.add_argument("--verbose", action="store_true", help="print the jobs' progress")
    evaluate.set_defaults(func=cmd_eval_tiny)
    report = commands.add_parser("report", help="write one self-contained HTML page about an output folder")
    report.add_argument("output_path", help="the job's output.path: a local folder or an s3:// prefix")
    report.add_argument("--out", default=None, help="where to write the page (default: OUTPUT_PATH/report.html)")
    report.add_argument("--samples", type=_samples, default=48, metavar="N",
                        help="sample images per stage chain on the contact sheet, 0..1000 (default 48)")
    report.add_argument("--storage-options", default=None, metavar="JSON",
                        help="s3fs options as JSON (default: the output's own, from its job.json)")
    report.set_defaults(func=cmd_report)
    served = commands.add_parser("serve", help="an OpenAI Images-compatible HTTP endpoint on Ray Serve "
                                 "(default: the built-in shapes model on 127.0.0.1:8000)")
    served.add_argument("config", nargs="?", default=None, help="serve config, YAML or JSON (see serve/README.md)")
    served.add_argument("--host", default=None, help="listen address (default: the config's, 127.0.0.1)")
    served.add_argument("--port", type=int, default=None, help="listen port (default: the config's, 8000)")
    served.set_defaults(func=cmd_serve)
    from jobs.cli import add_commands

    add_commands(commands, with_spec)  # submit, status, logs, stop, schedule
    tiny = commands.add_parser("tiny-model", help="write a tiny random-weight diffusers model folder")
    tiny.add_argument("out_dir")
    tiny.add_argument("--kind", choices=KINDS, required=True)
    tiny.add_argument("--family", choices=TINY_FAMILIES, default=None,
                      help="the model family's style (sd2: SD 2.x v-prediction); default: sd (sd-upscale for upscale)")
    tiny.set_defaults(func=cmd_tiny_model)
    return parser


class _Prefixed(logging.Formatter):
    """synth's lines: "synth: message", with the level named above info."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"synth: {level}{text}"


def configure_logging(level: str = "info") -> None:
    """The `synth` loggers: progress (info and below) to stdout, warnings and errors to
    stderr. Other libraries' loggers, Ray Data's progress among them, are left alone."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    root = logging.getLogger("synth")
    root.handlers[:] = []
    for handler in (out, err):
        handler.setFormatter(_Prefixed())
        root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    from pipeline.models import ModelError
    from pipeline.resources import PlanError
    from pipeline.spec import SpecError
    from pipeline.storage import OutputWriteError

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    # A stop from a scheduler or a container runtime ends the job as Ctrl-C does: the run
    # record says so, the output's lease is released, and a rerun resumes.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("synth: stopped; run the same command again to resume", file=sys.stderr)
        return 130
    except (SpecError, PlanError, ModelError, OutputWriteError) as error:
        logging.getLogger("synth").debug("the error's traceback", exc_info=True)
        print(f"synth: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        message = _cluster_error(error)
        if message is None:
            raise
        print(f"synth: error: {message}", file=sys.stderr)
        return 2


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _cluster_error(error: Exception) -> str | None:
    """A one-line reason for the Ray errors a user can act on, instead of a long traceback."""
    import ray.exceptions
    from ray.data.exceptions import ExecutionTimeoutError

    if isinstance(error, ExecutionTimeoutError):
        # Ray's message lists the operators still running: it names the stage that stalled.
        stalled = [line.strip() for line in str(error).splitlines() if line.strip().startswith("- ")]
        return (
            "the job made no progress for actor_start_timeout_s: the cluster lacks the GPUs or CPUs the "
            "stages ask for, a model load hangs, or one batch takes longer than that"
            + (f" (still running: {'; '.join(line[2:] for line in stalled)})" if stalled else "")
        )
    if isinstance(error, ray.exceptions.RayError):
        # An actor constructor that raised (model missing on a worker, bad scheduler...):
        # the cause's last line names it.
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        if any(name in str(error) for name in ("ModelError", "ActorDiedError", "RayActorError")):
            return lines[-1] if lines else type(error).__name__
    return None


if __name__ == "__main__":
    sys.exit(main())
