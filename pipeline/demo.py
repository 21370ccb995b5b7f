"""`synth demo`: tiny models, a prompt table and a txt2img -> upscale job, run on local Ray."""

from __future__ import annotations

from pathlib import Path

from pipeline.spec import JobSpec, parse_spec

DEMO_PROMPTS = [
    f"a {colour} {shape} on a {background} background"
    for colour in ("red", "green", "blue", "yellow")
    for shape in ("circle", "square")
    for background in ("white", "black")
]


def demo_spec(out_dir: Path) -> JobSpec:
    models = out_dir / "models"
    return parse_spec(
        {
            "name": "demo",
            "seed": 0,
            "input": {"path": str(out_dir / "prompts.parquet")},
            "stages": [
                {
                    "kind": "txt2img",
                    "model": str(models / "txt2img"),
                    "steps": 4,
                    "width": 32,
                    "height": 32,
                    "batch_size": 4,
                },
                {"kind": "upscale", "model": str(models / "upscale"), "steps": 4, "batch_size": 4},
            ],
            "output": {"path": str(out_dir / "output"), "format": "png"},
        },
        source="demo spec",
    )


def prepare_demo(out_dir: str | Path) -> JobSpec:
    """Write the tiny models, the prompt table and job.yaml; return the job's spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from pipeline.spec import resolved_dict
    from pipeline.tiny_models import write_tiny_model

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("txt2img", "upscale"):
        if not (out / "models" / kind / "model_index.json").is_file():
            write_tiny_model(out / "models" / kind, kind)
    pq.write_table(pa.table({"prompt": DEMO_PROMPTS}), out / "prompts.parquet")
    spec = demo_spec(out)
    (out / "job.yaml").write_text(yaml.safe_dump(resolved_dict(spec), sort_keys=False))
    return spec
