"""Does the built-in model draw what the prompt says? Each check runs as a real synth job on
the session's local Ray; the same checks must fail on the same architecture with random
weights, or they would prove nothing."""

import pytest

from pipeline.shapes.evaluate import PASS_MARKS, Evaluation

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):
    results = Evaluation("synth:shapes", tmp_path_factory.mktemp("eval-trained")).all()
    return {result.name: result for result in results}


@pytest.fixture(scope="module")
def untrained(ray_cluster, tmp_path_factory):
    from pipeline.shapes.train import write_untrained

    model = write_untrained(tmp_path_factory.mktemp("untrained-model"))
    results = Evaluation(str(model), tmp_path_factory.mktemp("eval-untrained")).all()
    return {result.name: result for result in results}


@pytest.mark.parametrize("check", sorted(PASS_MARKS))
def test_the_trained_model_passes(trained, check):
    result = trained[check]
    assert result.passed, f"{check}: {result.score:.2f} < {result.mark} ({result.detail})"


@pytest.mark.parametrize("check", sorted(PASS_MARKS))
def test_random_weights_fail(untrained, check):
    result = untrained[check]
    assert not result.passed, f"{check} passed on random weights: {result.detail}"
