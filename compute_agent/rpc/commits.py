"""Group commits on their own thread.

The consume loop gathers what finished during a turn into a ``Batch`` and
hands it over; the committer writes it in one journal transaction (one
fsync) while the loop goes on reading and dispatching, and hands it back
once it is on disk, for the loop to ack and settle (only the consume thread
touches the channel). One batch at a time: what finishes meanwhile joins the
next one, so the slower the disk, the larger the groups.
"""

import logging
import threading

LOG = logging.getLogger(__name__)

RETRY_PAUSE = 0.5   # s after a failed commit before the batch is handed back


class Batch:
    """One group commit: finished jobs and what goes with them."""

    __slots__ = ('jobs', 'replied', 'running', 'replies', 'confirmed',
                 'dropped', 'durable', 'error')

    def __init__(self, jobs, replied, running, replies, confirmed, dropped,
                 durable):
        self.jobs = jobs
        self.replied = replied   # per job: its reply targets answered
        self.running = running
        self.replies = replies
        self.confirmed = confirmed
        self.dropped = dropped
        self.durable = durable
        self.error = None

    def record(self, journal):
        journal.record(
            running=self.running,
            done=[(j.uid, j.request.method, j.instance_uuid, j.result_json,
                   j.failure) for j in self.jobs],
            messages=self.replies, confirmed=self.confirmed,
            dropped=self.dropped, durable=self.durable)


def due_running(running, finished, cutoff):
    """Split the buffered 'running' rows: (rows to write now, rows
    kept). Rows of ``finished`` requests are dropped (their outcome
    row replaces them); of the rest, those started before ``cutoff``
    (all when None) are due.

    Why not all: in a burst of casts many requests (10-17 % in
    bench/rpc.py) were still running when the group before them
    committed, and each such row cost one more random b-tree write
    (the row, then its outcome over it): a group commit of 100
    outcomes with 100 of them took ~1.5x as long (bench/README.rst).
    A request that ran shorter than the server's _RUNNING_FLUSH s and
    was cut off by a crash leaves no row: its redelivery runs it again
    either way (a 'running' row is never an outcome), only the start-up
    warning does not count it.
    """
    due, kept = [], []
    for since, row in running:
        if row[0] in finished:
            continue
        if cutoff is None or since <= cutoff:
            due.append(row)
        else:
            kept.append((since, row))
    return due, kept


class Committer:
    """Commits one ``Batch`` at a time; ``wake()`` after each."""

    def __init__(self, journal, wake):
        self._journal = journal
        self._wake = wake
        self._cv = threading.Condition()
        self._batch = None       # handed over, not yet committed
        self._done = []
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name='rpc-commit',
                                        daemon=True)
        self._thread.start()

    def busy(self):
        return self._batch is not None

    def submit(self, batch):
        with self._cv:
            if self._batch is not None:
                raise RuntimeError('a commit is already in progress')
            self._batch = batch
            self._cv.notify_all()

    def take(self):
        """Batches committed (or failed: ``error`` set) since the last call."""
        with self._cv:
            done, self._done = self._done, []
        return done

    def wait_idle(self, timeout=None):
        with self._cv:
            return self._cv.wait_for(lambda: self._batch is None, timeout)

    def stop(self):
        with self._cv:
            self._stopping = True
            self._cv.notify_all()

    def _run(self):
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._batch is not None
                                  or self._stopping)
                batch = self._batch
                if batch is None:
                    return
            try:
                batch.record(self._journal)
            except Exception as e:  # noqa: BLE001 - handed back, retried
                LOG.exception('Cannot record %d outcomes in the journal',
                              len(batch.jobs))
                batch.error = e
                with self._cv:
                    self._cv.wait(RETRY_PAUSE)
            with self._cv:
                self._done.append(batch)
                self._batch = None
                self._cv.notify_all()
            self._wake()
