"""Re-entrant locks by key that live only while in use.

The manager serializes the work on each instance with a lock per uuid. A
table that keeps every lock it ever made grows with every instance the
agent ever saw (destroyed and migrated-away ones too); here an entry goes
once nobody holds or waits for it, and a caller arriving meanwhile gets the
same lock, so a key never has two.
"""

import contextlib
import threading


class KeyedLocks:

    def __init__(self):
        self._guard = threading.Lock()
        self._locks = {}        # key -> [RLock, holders and waiters]

    @contextlib.contextmanager
    def __call__(self, key, blocking=True):
        """``with locks(key):`` holds ``key``'s lock (re-entrant);
        ``with locks(key, blocking=False) as held:`` takes it only if it is
        free at once, ``held`` says whether it did."""
        with self._guard:
            entry = self._locks.get(key)
            if entry is None:
                entry = self._locks[key] = [threading.RLock(), 0]
            entry[1] += 1
        held = False
        try:
            held = entry[0].acquire(blocking)
            yield held
        finally:
            if held:
                entry[0].release()
            with self._guard:
                entry[1] -= 1
                if not entry[1]:
                    del self._locks[key]

    def __len__(self):
        """Keys in use (tests)."""
        with self._guard:
            return len(self._locks)
