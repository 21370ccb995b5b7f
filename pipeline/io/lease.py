"""One writer per output: a lease that a run holds on its output while it writes.

Under the output prefix, `lease/<generation>.json` (twelve digits). The lease is the file
of the highest generation; it names its holder (run id, host, pid), when it was taken and
when it was last renewed. A run takes the lease by creating the next generation's file
exclusively (`create_exclusive`), so of two runs that try at once exactly one succeeds,
on a local disk and on S3 alike, also when both take over the same stale lease.

The holder renews its own file every `renew_s` seconds from a thread. A lease not renewed
for `timeout_s` seconds (its run was SIGKILLed, its host lost) is stale: the next run takes
it over with the next generation. A holder that finds a higher generation than its own was
cut off for longer than that and has lost the lease; the run stops at its next chunk
(`check`). Release marks the holder's file released, so the next run need not wait.

Staleness compares the holder's clock (renewed_at) with the reader's: hosts' clocks must
agree to well within timeout_s.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Literal

from pipeline import storage
from pipeline.spec import SpecError

logger = logging.getLogger("synth.lease")

FOLDER = "lease"
_NAME = re.compile(r"^(\d{12})\.json$")
# After a write that S3 did not condition (a store without If-None-Match), wait this long
# before reading the file back, so a racing writer's PUT has landed and the read shows who won.
_SETTLE_S = 1.0


class OutputBusy(SpecError):
    """Another run holds the output's lease."""


class LeaseLost(SpecError):
    """Another run took this run's lease over: this run could not renew it for timeout_s."""


def _utc(timestamp: float) -> str:
    try:
        return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):  # a lease file written with a wild clock
        return f"{timestamp!r} (not a time)"


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _create_local(path: str, data: bytes) -> bool:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as handle:
        handle.write(data)
    try:
        # A hard link fails when the name exists, and the file appears whole or not at all.
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (some network and FUSE mounts)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "wb") as handle:  # readers may see it empty for a moment
            handle.write(data)
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _unsupported(error: Exception) -> bool:
    """A store (or fsspec file system) that does not do conditional writes, as opposed to
    one that failed this one."""
    if isinstance(error, (NotImplementedError, TypeError)):
        return True
    text = f"{type(error).__name__} {error}"
    return any(word in text for word in ("NotImplemented", "not implemented", "If-None-Match", "IfNoneMatch",
                                         "not supported", "Unsupported"))


def _lost_race(error: Exception) -> bool:
    """A conditional PUT that another writer's won: AWS answers 409 ConditionalRequestConflict
    to concurrent ones (s3fs: EBUSY), some stores 412 without naming the condition."""
    text = str(error)
    return isinstance(error, OSError) and (
        error.errno == errno.EBUSY or "ConditionalRequestConflict" in text or "PreconditionFailed" in text
    )


_warned_unconditional = False


def create_exclusive(fs, path: str, data: bytes) -> Literal["created", "exists", "unconditional"]:
    """Create `path` holding `data` unless it exists, atomically against another creator:
    a hard link of a complete temporary file on a local disk (O_EXCL where the file system
    has no links), a conditional PUT (If-None-Match: *) on S3.

    "unconditional": the store refused conditional writes, so the file was written after a
    check that it did not exist; two writers racing within that round trip both get it,
    and the caller must read the file back to learn which one won."""
    global _warned_unconditional

    if _is_local(fs):
        return "created" if _create_local(path, data) else "exists"
    try:
        fs.pipe_file(path, data, mode="create")
        return "created"
    except FileExistsError:
        return "exists"
    except Exception as error:
        if _lost_race(error):
            return "exists"
        if not _unsupported(error):
            raise
        if not _warned_unconditional:
            logger.warning(
                "the store refused a conditional write (%s: %s); falling back to check-then-write, which two runs "
                "starting within the same second can both pass", type(error).__name__, str(error)[:200]
            )
            _warned_unconditional = True
    try:
        fs.invalidate_cache(posixpath.dirname(path))
        fs.info(path)
        return "exists"
    except FileNotFoundError:
        fs.pipe_file(path, data)
        return "unconditional"


@dataclass
class Holder:
    """A lease file's content."""

    run_id: str
    host: str
    pid: int
    acquired_unix: float  # the holder's clock
    renewed_unix: float
    timeout_s: float
    released: bool = False
    generation: int = 0

    def to_json(self) -> bytes:
        data = asdict(self)
        data.update(acquired_at=_utc(self.acquired_unix), renewed_at=_utc(self.renewed_unix))
        return json.dumps(data, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, generation: int) -> "Holder":
        raw = json.loads(data)
        fields = {name: raw[name] for name in ("run_id", "host", "pid", "acquired_unix", "renewed_unix", "timeout_s")}
        return cls(**fields, released=bool(raw.get("released")), generation=generation)

    def stale(self, now: float) -> bool:
        """Not renewed for timeout_s, or renewed further in the future than that (a holder
        whose clock is off by more than the timeout would otherwise hold it for years)."""
        return abs(now - self.renewed_unix) > self.timeout_s

    def describe(self, now: float) -> str:
        return (f"run {self.run_id} on host {self.host} (pid {self.pid}), holding it since "
                f"{_utc(self.acquired_unix)}, last renewed {max(0.0, now - self.renewed_unix):.0f} s ago")


class Lease:
    """This run's hold on one output. `with lease:` takes it (waiting up to wait_s for a
    holder to finish), renews it from a thread while the block runs, and releases it at
    the end, on success or error."""

    def __init__(self, fs, root: str, label: str, run_id: str, renew_s: float, timeout_s: float, wait_s: float = 0.0):
        self.fs = fs
        self.folder = storage.join(root, FOLDER)
        self.label = label  # the output path, for messages
        self.run_id = run_id
        self.renew_s = renew_s
        self.timeout_s = timeout_s
        self.wait_s = wait_s
        self.generation: int | None = None
        self.acquired_unix = 0.0
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Renewal and release each write the holder's file: a renewal still in flight when
        # the run ends must not write "held" over "released".
        self._writing = threading.Lock()
        self._released = False

    # ------------------------------------------------------------ reading

    def _path(self, generation: int) -> str:
        return storage.join(self.folder, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        try:
            # find() lists afresh on S3 (ls() would answer from s3fs's listing cache).
            files = self.fs.find(self.folder)
        except FileNotFoundError:
            return []
        found = (_NAME.match(posixpath.basename(str(file).replace(os.sep, "/"))) for file in files)
        return sorted(int(match.group(1)) for match in found if match)

    def _read(self, generation: int) -> Holder | None:
        """The holder written in a generation's file; None once the file is gone."""
        path = self._path(generation)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return Holder.from_json(data, generation)
        except (ValueError, KeyError, TypeError):
            # Being written (O_EXCL without links), or damaged: held by someone unknown,
            # renewed when the file was last written.
            try:
                modified = self.fs.modified(path).timestamp()
            except Exception:
                modified = time.time()
            return Holder("unknown", "unknown", 0, modified, modified, self.timeout_s, generation=generation)

    def current(self) -> Holder | None:
        """The lease as it stands: the holder of the highest generation, or None."""
        for _ in range(5):
            generations = self._generations()
            if not generations:
                return None
            holder = self._read(generations[-1])
            if holder is not None:
                return holder
            # removed between the listing and the read: a newer generation took its place
        return None

    # ------------------------------------------------------------ taking, renewing, releasing

    def acquire(self) -> None:
        """Take the lease, waiting up to wait_s while another run holds it; OutputBusy when
        it is still held then."""
        deadline = time.monotonic() + self.wait_s
        announced = False
        while True:
            holder = self.current()
            now = time.time()
            if holder is None or holder.released or holder.stale(now):
                if holder is not None and not holder.released:
                    logger.warning("taking over the lease on %s from %s: it is stale (not renewed for %g s)",
                                   self.label, holder.describe(now), holder.timeout_s)
                # Exactly the generation after the one judged free: a run that took one in the
                # meantime holds it, and this take then finds it exists.
                if self._take(holder.generation + 1 if holder else 1):
                    return
                continue  # another run took it first: look again
            if time.monotonic() >= deadline:
                waited = f", still after waiting {self.wait_s:g} s" if self.wait_s else ""
                raise OutputBusy(
                    f"output.path: {self.label} is being written by another run{waited}: {holder.describe(now)}. "
                    "Wait for it with --wait-for-lease SECONDS, or run again once it has ended; the lease of a run "
                    f"that was killed goes stale {holder.timeout_s:g} s after its last renewal, and the next run "
                    "takes it over"
                )
            if not announced:
                logger.info("%s is being written by %s; waiting up to %g s for it to end",
                            self.label, holder.describe(now), self.wait_s)
                announced = True
            time.sleep(max(0.05, min(1.0, deadline - time.monotonic())))

    def _take(self, generation: int) -> bool:
        now = time.time()
        holder = Holder(self.run_id, socket.gethostname(), os.getpid(), now, now, self.timeout_s, generation=generation)
        outcome = create_exclusive(self.fs, self._path(generation), holder.to_json())
        if outcome == "unconditional":
            time.sleep(_SETTLE_S)
        # Read back, also after "exists": a PUT whose answer was lost and retried finds
        # its own file, and a store that ignored the condition shows who won.
        written = self._read(generation)
        if written is None or written.run_id != self.run_id:
            return False
        self.generation, self.acquired_unix = generation, now
        for older in self._generations():  # earlier holders' files: no one reads them again
            if older < generation:
                try:
                    self.fs.rm_file(self._path(older))
                except Exception:
                    pass
        logger.debug("took the lease on %s (generation %d)", self.label, generation)
        return True

    def renew(self) -> bool:
        """Write a new renewal time into this run's file; False when the lease was lost (a
        newer generation exists, or this run's file is gone)."""
        with self._writing:
            if self._released:
                return True
            generations = self._generations()
            if self.generation not in generations or generations[-1] != self.generation:
                return False
            written = self._read(self.generation)
            if written is None or written.run_id != self.run_id:  # a racer holds this generation
                return False
            holder = Holder(self.run_id, socket.gethostname(), os.getpid(), self.acquired_unix, time.time(),
                            self.timeout_s, generation=self.generation)
            storage.write_bytes_atomic(self.fs, self._path(self.generation), holder.to_json())
            return True

    def _beat(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.renew_s):
            try:
                if not self.renew():
                    logger.error("the lease on %s was taken over by another run: this run stops", self.label)
                    self.lost.set()
                    return
                renewed = time.monotonic()
            except Exception as error:  # the store is unreachable for now: try again next beat
                logger.warning("could not renew the lease on %s: %s: %s", self.label, type(error).__name__, error)
                # Before another run may find the lease stale, this one stands down: it
                # cannot tell whether the store still sees it, and two runs must never write.
                if time.monotonic() - renewed > self.timeout_s - self.renew_s:
                    logger.error("the lease on %s went unrenewed for %g s: this run stops", self.label,
                                 time.monotonic() - renewed)
                    self.lost.set()
                    return

    def check(self) -> None:
        """Raise LeaseLost once another run has taken this run's lease over."""
        if self.lost.is_set():
            raise LeaseLost(
                f"output.path: another run took over this run's lease on {self.label} (this run did not renew it "
                f"for {self.timeout_s:g} s: a paused process or an unreachable store); this run stops. Its "
                "committed chunks stay committed"
            )

    def release(self) -> None:
        """Stop renewing and mark the lease released (unless it was lost)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.generation is None or self.lost.is_set():
            return
        with self._writing:
            self._released = True
            try:
                generations = self._generations()
                if generations and generations[-1] == self.generation:
                    holder = Holder(self.run_id, socket.gethostname(), os.getpid(), self.acquired_unix, time.time(),
                                    self.timeout_s, released=True, generation=self.generation)
                    storage.write_bytes_atomic(self.fs, self._path(self.generation), holder.to_json())
            except Exception as error:  # it goes stale after timeout_s instead
                logger.warning("could not release the lease on %s: %s: %s", self.label, type(error).__name__, error)

    def __enter__(self) -> "Lease":
        try:
            self.acquire()
        except OSError as error:  # the store failed us: exit 2 and one line, as for other output I/O
            raise storage.OutputWriteError.of(self.label, error, "use") from None
        self._thread = threading.Thread(target=self._beat, name="synth-lease", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
