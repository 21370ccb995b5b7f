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
    assert content_id(["ab", "c"]) != content_id(["a", "bc"])
    assert content_id([None]) != content_id([""])
    assert content_id([b"x"]) != content_id(["x"])
    assert content_id(["a", 1]) == content_id(["a", 1])


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
