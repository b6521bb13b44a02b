"""Calls run after a delay, in due order, on one thread.

A ``threading.Timer`` is a thread per call, asleep until its time: a host
whose 1,000 guests stop at once (their storage went away, say) would start
1,000 threads, each with its stack and malloc cache, for checks of a few
milliseconds each. Here one thread serves any number from a heap, and only
while one is waiting: an agent with nothing due has none.
"""

import heapq
import itertools
import logging
import threading
import time

LOG = logging.getLogger(__name__)


class Later:

    def __init__(self, name):
        self._name = name
        self._cond = threading.Condition()
        self._heap = []                     # (due, seq, fn, args)
        self._seq = itertools.count()       # ties run in call order
        self._thread = None

    def call(self, delay, fn, *args):
        """Run ``fn(*args)`` once ``delay`` seconds have passed; an
        exception is logged. Calls run one at a time: a slow one delays
        the next."""
        entry = (time.monotonic() + delay, next(self._seq), fn, args)
        with self._cond:
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run,
                                                name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0] is entry:    # sooner than the one waited for
                self._cond.notify()

    def pending(self):
        """Calls not yet run."""
        with self._cond:
            return len(self._heap)

    def _run(self):
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._thread = None     # the next call starts one
                        return
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        _, _, fn, args = heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            try:
                fn(*args)
            except Exception:   # noqa: BLE001 - one failed call stops no other
                LOG.exception('Delayed call %s failed', getattr(fn, '__name__', fn))
