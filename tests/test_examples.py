from pathlib import Path

import pytest

from pipeline.spec import JobSpec, load_spec

EXAMPLES = sorted((Path(__file__).parent.parent / "jobs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_are_valid(path):
    assert load_spec(path).stages


def test_readme_documents_every_spec_field():
    readme = (Path(__file__).parent.parent / "README.md").read_text()

    def fields(model, prefix=""):
        for name, info in model.model_fields.items():
            yield prefix + name
            annotation = info.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from fields(annotation, prefix + name + ".")

    missing = [name for name in fields(JobSpec) if f"`{name.split('.')[-1]}`" not in readme]
    missing += [f"stages.{name}" for name in JobSpec.model_fields["stages"].annotation.__args__[0].model_fields
                if f"`{name}`" not in readme]
    assert not missing, f"README lacks: {missing}"
