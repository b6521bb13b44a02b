"""Periodic tasks, each on its own schedule and its own thread.

A task whose interval is 0 (or None) is disabled: no thread, no wake-ups.
Each enabled task sleeps on the shared stop event until it is due, so a slow
task (a power sync waiting on libvirtd) delays nothing but itself, and the
watchdog task keeps its rhythm whatever the others do.
"""

import logging
import threading
import time

LOG = logging.getLogger(__name__)


class Task:
    """One named callable run every ``interval`` seconds."""

    def __init__(self, name, interval, fn, run_immediately=True):
        self.name = name
        self.interval = float(interval)
        self.fn = fn
        self.run_immediately = run_immediately
        self.runs = 0
        self.failures = 0
        self.last_started = None      # monotonic
        self.thread = None

    def loop(self, stop):
        if not self.run_immediately and stop.wait(self.interval):
            return
        while not stop.is_set():
            self.last_started = started = time.monotonic()
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - logged; the next run may work
                self.failures += 1
                LOG.exception('periodic task %s failed', self.name)
            self.runs += 1
            # Fixed rate from the start of the run; a run longer than the
            # interval is followed at once by the next one.
            if stop.wait(max(0.0, started + self.interval - time.monotonic())):
                return


class Runner:
    """Starts and stops a set of :class:`Task`."""

    def __init__(self):
        self.tasks = {}
        self._stop = threading.Event()

    def add(self, name, interval, fn, run_immediately=True):
        """Register a task; an interval of 0/None disables it (returns None)."""
        if not interval or interval <= 0:
            LOG.debug('periodic task %s disabled', name)
            return None
        task = self.tasks[name] = Task(name, interval, fn, run_immediately)
        return task

    def start(self):
        for task in self.tasks.values():
            task.thread = threading.Thread(
                target=task.loop, args=(self._stop,),
                name='periodic-' + task.name, daemon=True)
            task.thread.start()

    def stop(self, timeout=5.0):
        self._stop.set()
        end = time.monotonic() + timeout
        for task in self.tasks.values():
            if task.thread is not None:
                task.thread.join(max(0.0, end - time.monotonic()))

    def dead(self):
        """Names of started tasks whose thread has died (should be none)."""
        if self._stop.is_set():
            return []
        return [t.name for t in self.tasks.values()
                if t.thread is not None and not t.thread.is_alive()]
