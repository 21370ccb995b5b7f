"""`synth demo`: the built-in shapes model draws every colour, shape and background on local Ray."""

from __future__ import annotations

from pathlib import Path

from pipeline.spec import JobSpec, parse_spec

# One prompt per colour, shape and background: 36, the held-out pairs included.
GRID_COLUMNS = [(shape, background) for background in ("white", "black") for shape in ("circle", "square", "triangle")]


def demo_rows() -> list[tuple[str, str]]:
    """(id, prompt) of each image. Named ids fix each row's seed (it derives from the job
    seed and the id), so the sheet does not depend on how synth hashes rows without one."""
    from pipeline.shapes.dataset import COLOURS, Scene

    return [
        (f"{colour}-{shape}-on-{background}", Scene(colour, shape, background).caption)
        for colour in COLOURS
        for shape, background in GRID_COLUMNS
    ]


def demo_prompts() -> list[str]:
    return [prompt for _, prompt in demo_rows()]


def demo_spec(out_dir: Path) -> JobSpec:
    return parse_spec(
        {
            "name": "demo",
            "seed": 0,
            "input": {"path": str(out_dir / "prompts.parquet"), "id_column": "id"},
            "stages": [
                # The sampling recipe the shapes model was trained for (DPM++ 2M is its scheduler).
                {"kind": "txt2img", "model": "synth:shapes", "steps": 20, "guidance_scale": 4.0,
                 "width": 32, "height": 32, "batch_size": 12},
            ],
            "output": {"path": str(out_dir / "output"), "format": "png"},
        },
        source="demo spec",
    )


def prepare_demo(out_dir: str | Path) -> JobSpec:
    """Write the prompt table and job.yaml; return the job's spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from pipeline.spec import resolved_dict

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ids, prompts = zip(*demo_rows())
    pq.write_table(pa.table({"id": list(ids), "prompt": list(prompts)}), out / "prompts.parquet")
    spec = demo_spec(out)
    (out / "job.yaml").write_text(yaml.safe_dump(resolved_dict(spec), sort_keys=False))
    return spec


def write_grid(output_dir: str | Path, grid_path: str | Path, scale: int = 3) -> Path:
    """A contact sheet of the demo's images: a row per colour, a column per shape and
    background, each image enlarged `scale` times (nearest neighbour, so no pixel is invented)."""
    import pyarrow.parquet as pq
    from PIL import Image

    rows = pq.read_table(Path(output_dir) / "metadata").select(["prompt", "status", "image_uri"]).to_pylist()
    by_prompt = {row["prompt"]: row["image_uri"] for row in rows if row["status"] == "ok"}
    prompts = demo_prompts()
    columns = len(GRID_COLUMNS)
    cell, gap = 32 * scale, 4
    sheet = Image.new("RGB", (columns * (cell + gap) + gap, (len(prompts) // columns) * (cell + gap) + gap), (128, 128, 128))
    for index, prompt in enumerate(prompts):
        uri = by_prompt.get(prompt)
        if uri is None:
            continue
        image = Image.open(uri).convert("RGB").resize((cell, cell), Image.NEAREST)
        row, column = divmod(index, columns)
        sheet.paste(image, (gap + column * (cell + gap), gap + row * (cell + gap)))
    sheet.save(grid_path)
    return Path(grid_path)
