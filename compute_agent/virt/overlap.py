"""Running independent steps of one operation at the same time.

A spawn's files (a ``qemu-img`` run, the config drive, links) and its
``defineXML`` wait on different things (a child process, the disk, libvirtd),
so running them at once takes the time of the longest instead of the sum.
Each step runs in a thread of its own, started for it and ended with it:
an idle agent keeps no threads (bench/README.rst, scale.py), and a spawn
makes a few steps, not thousands.
"""

import threading


class Step:
    """``fn(*args)`` started now in its own thread; ``wait()`` for it."""

    def __init__(self, fn, *args, name='step'):
        self._fn, self._args = fn, args
        self._value = self._error = None
        self._thread = threading.Thread(target=self._run, name=name,
                                        daemon=True)
        self._thread.start()

    def _run(self):
        try:
            self._value = self._fn(*self._args)
        except BaseException as e:      # noqa: BLE001 - re-raised by wait()
            self._error = e
        finally:
            self._fn = self._args = None

    def wait(self):
        """The step's value once it ended; its exception re-raised."""
        self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self._value


def run_all(calls):
    """Run each of ``calls`` (zero-argument callables) at once, the last in
    this thread; return their values in order once every one has ended.

    Every call ends before this returns or raises, so a caller's rollback
    never races a step still running; the first failure (in order) is
    raised, after all of them ended.
    """
    calls = list(calls)
    if not calls:
        return []
    steps = [Step(call, name='spawn-step') for call in calls[:-1]]
    values, errors = [], []
    try:
        values_last = calls[-1]()
    except BaseException as e:          # noqa: BLE001 - raised below
        values_last, last_error = None, e
    else:
        last_error = None
    for step in steps:
        try:
            values.append(step.wait())
        except BaseException as e:      # noqa: BLE001 - raised below
            values.append(None)
            errors.append(e)
    if last_error is not None:
        errors.append(last_error)
    if errors:
        raise errors[0]
    return values + [values_last]
