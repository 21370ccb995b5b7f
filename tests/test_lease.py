"""The output's lease: one writer at a time, on a local disk and on S3 (no Ray here)."""

import json
import threading
import time

import pytest

from pipeline import storage
from pipeline.io.lease import Holder, Lease, LeaseLost, OutputBusy, create_exclusive

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(params=["local", "s3"])
def output(request, tmp_path):
    """(fs, root) of an output folder: a local one, or a prefix on the loopback S3 server."""
    if request.param == "local":
        return storage.filesystem(str(tmp_path / "out"))
    bucket, options, _ = request.getfixturevalue("s3")
    return storage.filesystem(f"{bucket}/out", options)


def lease(output, run_id, wait_s=0.0, renew_s=0.2, timeout_s=2.0) -> Lease:
    fs, root = output
    return Lease(fs, root, root, run_id, renew_s, timeout_s, wait_s)


def test_of_runs_that_take_a_lease_at_once_exactly_one_gets_it(output):
    start = threading.Barrier(6)
    outcomes = {}

    def take(run_id):
        start.wait()
        try:
            lease(output, run_id).acquire()
            outcomes[run_id] = "held"
        except OutputBusy as error:
            outcomes[run_id] = str(error)

    threads = [threading.Thread(target=take, args=(f"run-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [run_id for run_id, outcome in outcomes.items() if outcome == "held"]
    assert len(winners) == 1, outcomes
    for run_id, outcome in outcomes.items():
        if run_id != winners[0]:  # the refusal names the holder: run id, host, since when
            assert f"is being written by another run: run {winners[0]} on host " in outcome
            assert "holding it since" in outcome and "--wait-for-lease" in outcome


def test_a_held_lease_is_renewed_released_and_then_taken_at_once(output):
    fs, root = output
    with lease(output, "first") as first:
        renewed = first.current().renewed_unix
        time.sleep(0.7)  # a few renewals (every 0.2 s)
        assert first.current().renewed_unix > renewed and not first.lost.is_set()
        with pytest.raises(OutputBusy, match="run first on host"):
            lease(output, "second").acquire()
    assert first.current().released
    with lease(output, "second") as second:
        assert second.generation == 2
    # each taker removes the files of the holders before it
    assert [path.rsplit("/", 1)[-1] for path in fs.find(storage.join(root, "lease"))] == ["000000000002.json"]


def test_a_waiting_run_takes_the_lease_when_its_holder_ends(output):
    holder = lease(output, "holder").__enter__()
    threading.Timer(1.0, holder.release).start()
    started = time.monotonic()
    with lease(output, "waiter", wait_s=30) as waiter:
        assert waiter.generation == 2
    assert 0.8 < time.monotonic() - started < 10


def test_a_stale_lease_is_taken_over_and_its_holder_learns_it_lost(output):
    fs, root = output
    killed = lease(output, "killed")
    killed.acquire()  # and never renewed, as after a SIGKILL: it goes stale after 2 s
    with pytest.raises(OutputBusy):
        lease(output, "early").acquire()
    time.sleep(2.2)
    with lease(output, "next") as taker:
        assert taker.generation == 2
        # The old holder (a paused process that comes back) finds it lost the lease.
        assert not killed.renew()
        killed.lost.set()
        with pytest.raises(LeaseLost, match="another run took over this run's lease"):
            killed.check()


def test_a_lease_written_with_an_old_heartbeat_by_another_host_is_taken_over(output):
    fs, root = output
    old = time.time() - 3600
    stale = Holder("gone", "other-host", 4242, old, old, timeout_s=300)
    assert create_exclusive(fs, storage.join(root, "lease", "000000000007.json"), stale.to_json()) == "created"
    with lease(output, "next") as taker:
        assert taker.generation == 8
        written = json.loads(fs.cat_file(storage.join(root, "lease", "000000000008.json")))
        assert written["run_id"] == "next" and written["renewed_at"].endswith("Z")


def test_a_lease_from_a_clock_far_ahead_or_past_any_time_is_stale_not_a_crash(output):
    fs, root = output
    ahead = time.time() + 70 * 365 * 86400  # a host whose clock is decades ahead
    held = Holder("ahead", "other-host", 4242, ahead, ahead, timeout_s=300)
    assert create_exclusive(fs, storage.join(root, "lease", "000000000003.json"), held.to_json()) == "created"
    with lease(output, "next") as taker:
        assert taker.generation == 4
    wild = Holder("wild", "other-host", 4242, 9e99, 9e99, timeout_s=300, generation=5)
    assert "(not a time)" in wild.describe(time.time())


def test_a_holder_that_cannot_renew_stands_down_before_its_lease_can_go_stale(output):
    fs, root = output
    holder = lease(output, "cut-off", renew_s=0.2, timeout_s=1.0)
    with holder:
        holder.renew = lambda: (_ for _ in ()).throw(OSError("the store is unreachable"))
        time.sleep(1.6)
        with pytest.raises(LeaseLost):
            holder.check()


def test_create_exclusive_creates_once(output):
    fs, root = output
    path = storage.join(root, "job.json")
    assert create_exclusive(fs, path, b"first") == "created"
    assert create_exclusive(fs, path, b"second") == "exists"
    assert fs.cat_file(path) == b"first"


def test_a_store_without_conditional_writes_falls_back_to_check_then_write(s3):
    bucket, options, _ = s3
    fs, root = storage.filesystem(f"{bucket}/out", options)
    plain = fs.pipe_file

    def refuses_conditions(path, data, mode="overwrite", **kwargs):
        if mode == "create":  # as a store answers that does not implement If-None-Match
            raise OSError("NotImplemented: A header you provided implies functionality that is not implemented")
        return plain(path, data, **kwargs)

    fs.pipe_file = refuses_conditions
    try:
        path = storage.join(root, "job.json")
        assert create_exclusive(fs, path, b"first") == "unconditional"
        assert create_exclusive(fs, path, b"second") == "exists"
        with lease((fs, root), "only") as only:
            assert only.generation == 1
    finally:
        del fs.pipe_file
