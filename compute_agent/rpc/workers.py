"""Worker pools with per-key ordering.

Operations on one instance must run one at a time in arrival order while
different instances run in parallel (docs: protocol-ordering). Keyed jobs go
to ``max_concurrent_builds`` threads, at most one job per key at a time;
keyless jobs (ping, get_info, ...) go to a separate small pool so they answer
even while every build thread is busy.

Plain threads on a SimpleQueue rather than ThreadPoolExecutor: no Future per
job, which matters when the consume thread hands over thousands of casts a
second.
"""

import collections
import logging
import queue
import threading

LOG = logging.getLogger(__name__)

_STOP = object()


class _Pool:
    """Up to ``size`` threads, started as work needs them (an idle agent
    keeps none: each thread's stack and malloc arena cost memory) and kept
    once started."""

    def __init__(self, size, name):
        self._size, self._name = size, name
        self._closed = False
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = []
        # Both changed together once a thread has taken a job, so a job
        # just taken still counts against its taker: never one too few.
        # Kept only until every thread runs (``_full``): from then on no
        # job takes the lock, which workers and the consume thread would
        # contend for (a burst of casts lost ~10 % with it).
        self._idle = 0            # threads waiting for work
        self._waiting = 0         # jobs not yet taken
        self._full = False

    def put(self, fn):
        if self._full:
            self._queue.put(fn)
            return
        with self._lock:
            self._waiting += 1
            self._queue.put(fn)
            if self._closed or self._full or self._waiting <= self._idle:
                return
            t = threading.Thread(target=self._loop, daemon=True,
                                 name='%s-%d' % (self._name,
                                                 len(self._threads)))
            self._threads.append(t)
            self._idle += 1       # counted before it runs: no second start
            self._full = len(self._threads) >= self._size
            t.start()

    def _loop(self):
        while True:
            fn = self._queue.get()
            if fn is _STOP:
                return
            if not self._full:
                with self._lock:
                    self._idle -= 1
                    self._waiting -= 1
            if not self._closed:  # else not started: stays unacked
                try:
                    fn()
                except Exception:  # noqa: BLE001 - jobs report their own
                    LOG.exception('Unexpected error in worker job')
            if not self._full:
                with self._lock:
                    self._idle += 1

    def dead(self):
        """Threads of this pool that are no longer running."""
        return sum(1 for t in self._threads if not t.is_alive())

    def shutdown(self):
        with self._lock:
            self._closed = True
            threads = len(self._threads)
        for _ in range(threads):
            self._queue.put(_STOP)


class KeyedExecutor:

    def __init__(self, max_workers, fast_workers=4, name='rpc'):
        self._pool = _Pool(max_workers, name + '-worker')
        self._fast = _Pool(fast_workers, name + '-fast')
        self._lock = threading.Lock()
        self._queues = {}   # key -> deque of jobs waiting behind the running
        self._closed = False

    def submit(self, key, fn):
        """Run ``fn()``; jobs with the same non-None key run in order, alone."""
        if key is None:
            self._fast.put(fn)
            return
        with self._lock:
            waiting = self._queues.get(key)
            if waiting is not None:
                waiting.append(fn)
                return
            self._queues[key] = collections.deque()
        self._pool.put(lambda: self._run_keyed(key, fn))

    def pending(self, key):
        """Jobs of ``key`` running or waiting."""
        with self._lock:
            q = self._queues.get(key)
            return 0 if q is None else len(q) + 1

    def _run_keyed(self, key, fn):
        try:
            fn()
        finally:
            with self._lock:
                waiting = self._queues[key]
                if not waiting or self._closed:
                    del self._queues[key]
                    nxt = None
                else:
                    nxt = waiting.popleft()
            # Back of the pool's line, so one busy instance cannot starve
            # the others.
            if nxt is not None:
                self._pool.put(lambda: self._run_keyed(key, nxt))

    def dead_threads(self):
        """Worker threads that died (a liveness check: should be 0)."""
        return self._pool.dead() + self._fast.dead()

    def shutdown(self):
        """Start nothing new; running jobs finish in their threads."""
        with self._lock:
            self._closed = True
        self._pool.shutdown()
        self._fast.shutdown()
