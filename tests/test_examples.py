import re
from pathlib import Path

import pytest

from pipeline.spec import JobSpec, load_spec

EXAMPLES = sorted((Path(__file__).parent.parent / "jobs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    assert load_spec(path).stages


def test_readme_documents_every_spec_field_in_its_own_table():
    from pipeline.spec import Columns, InputSpec, OutputSpec, OverrideColumns, Replicas
    from pipeline.stages import STAGES

    readme = (Path(__file__).parent.parent / "README.md").read_text()

    def section(heading: str) -> str:
        text = readme.split(f"\n### {heading}\n", 1)[1]
        return text.split("\n### ", 1)[0].split("\n## ", 1)[0]

    missing = []
    # every field is a row of its own section's table ...
    sections = [("Top level", JobSpec), ("`input`", InputSpec), ("`output`", OutputSpec)]
    sections += [("`stages[]`", declared) for declared in STAGES.values()]  # every kind's fields
    for heading, model in sections:
        table = section(heading)
        rows = re.findall(r"^\| ([^|]*) \|", table, flags=re.M)  # first cells: "`width`, `height`"
        missing += [f"{heading}: {name}" for name in model.model_fields if not any(f"`{name}`" in row for row in rows)]
    # ... and the fields of the maps inside them are named there
    for heading, model in [("`input`", Columns), ("`input`", OverrideColumns), ("`stages[]`", Replicas)]:
        missing += [f"{heading}: {name}" for name in model.model_fields if f"`{name}`" not in section(heading)]
    assert not missing, f"README lacks: {missing}"
