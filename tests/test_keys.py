import posixpath

from pipeline.keys import content_id, derive_seed, image_key, stage_seed


def test_image_keys_stay_under_the_prefix_whatever_the_id():
    for row_id in ["../../etc/passwd", "/abs/path", "a/../../b", "%2e%2e%2f", "nul\x00byte", "ok-id"]:
        key = image_key(row_id, "png")
        assert key.startswith("images/")
        assert posixpath.normpath(key) == key
        assert ".." not in key and "\x00" not in key


def test_keys_are_stable_and_spread():
    assert image_key("row-1", "jpeg") == image_key("row-1", "jpeg")
    assert image_key("row-1", "jpeg").endswith(".jpg")
    prefixes = {image_key(str(i), "png").split("/")[1] for i in range(2000)}
    assert len(prefixes) > 200  # 256 possible


def test_content_id_separates_values_and_types():
    assert content_id({"prompt": "ab", "negative_prompt": "c"}) != content_id({"prompt": "a", "negative_prompt": "bc"})
    assert content_id({"prompt": None}) != content_id({"prompt": ""})
    assert content_id({"prompt": b"x"}) != content_id({"prompt": "x"})
    assert content_id({"prompt": "a", "seed": 1}) == content_id({"seed": 1, "prompt": "a"})
    assert content_id({"prompt": "a", "seed": 1}) != content_id({"prompt": "a", "steps": 1})


def test_content_id_is_the_same_for_a_number_in_any_type_and_for_an_empty_cell_or_none():
    assert content_id({"seed": 7}) == content_id({"seed": 7.0}) != content_id({"seed": 7.5})
    assert content_id({"seed": 2**60 + 1}) != content_id({"seed": 2**60})
    assert content_id({"prompt": "a", "steps": None}) == content_id({"prompt": "a"})
    assert content_id({"prompt": "a", "steps": float("nan")}) == content_id({"prompt": "a"})


def test_seeds_are_derived_deterministically():
    assert derive_seed(7, "row") == derive_seed(7, "row")
    assert derive_seed(7, "row") != derive_seed(8, "row")
    assert 0 <= derive_seed(7, "row") < 2**63
    assert stage_seed(42, 0) == 42
    assert stage_seed(42, 1) != 42


def test_queue_wait_accumulates_per_row_and_tolerates_batches_from_outside_ray_data():
    import time

    import numpy as np

    from pipeline import batch as B

    # A batch from outside Ray Data (a plain worker call) has no timing columns: no wait.
    assert B.queued({B.ID: np.array(["a", "b"])}).tolist() == [0.0, 0.0]
    assert B.queued({B.ID: np.array([])}).tolist() == []
    # Two rows handed off 4 s and 2 s ago, 1 s already queued each: each row's share of its
    # chunk's wait grows by its own wait / rows.
    now = time.time()
    batch = {B.ID: np.array(["a", "b"]), B.HANDOFF_AT: np.array([now - 4, now - 2]), B.QUEUE_SECONDS: np.ones(2)}
    first, second = B.queued(batch)
    assert 2.9 < first < 3.2 and 1.9 < second < 2.2
    # A clock behind the sender's (another node) never makes a negative wait.
    batch[B.HANDOFF_AT] = np.array([now + 60, now + 60])
    assert B.queued(batch).tolist() == [1.0, 1.0]
