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

    def __init__(self, size, name):
        self._closed = False
        self._queue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, daemon=True,
                                          name='%s-%d' % (name, i))
                         for i in range(size)]
        for t in self._threads:
            t.start()

    def put(self, fn):
        self._queue.put(fn)

    def _loop(self):
        while True:
            fn = self._queue.get()
            if fn is _STOP:
                return
            if self._closed:
                continue  # not started: its message stays unacked
            try:
                fn()
            except Exception:  # noqa: BLE001 - jobs report their own errors
                LOG.exception('Unexpected error in worker job')

    def dead(self):
        """Threads of this pool that are no longer running."""
        return sum(1 for t in self._threads if not t.is_alive())

    def shutdown(self):
        self._closed = True
        for _ in self._threads:
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
