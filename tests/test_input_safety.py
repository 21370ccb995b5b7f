"""Untrusted table cells stay inert: a prompt of invisible characters is empty. Each problem
fails its row alone."""

from pipeline import batch as B
from pipeline.io.prepare import RowRules, canonical_batch


def test_a_prompt_of_invisible_characters_is_empty():
    invisible = ["\u200b", "\u200c\u200d", " \u2060\ufeff\t", "\u180e", "\u00ad\u3164", "\U000e0041"]
    rules = RowRules(roles={"prompt": "prompt"}, overrides={})
    rows = canonical_batch({"prompt": [*invisible, "a\u200bred circle"]}, rules)
    assert list(rows[B.ERROR]) == ["prompt: the prompt is empty"] * len(invisible) + [""]
    upscale = canonical_batch({"prompt": invisible}, RowRules(roles={"prompt": "prompt"}, overrides={},
                                                              prompt_required=False))
    assert list(upscale[B.STATUS]) == ["ok"] * len(invisible)  # a stage without a prompt does not need one
