"""compute_agent.later: delayed calls in due order on one thread."""

import threading
import time

from compute_agent.later import Later


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def _threads(name):
    return [t for t in threading.enumerate() if t.name == name]


def test_calls_run_in_due_order_not_call_order():
    later, ran = Later('t-order'), []
    later.call(0.3, ran.append, 'slow')
    later.call(0.1, ran.append, 'soon')      # wakes the waiting thread
    later.call(0.1, ran.append, 'soon, second')
    later.call(0, ran.append, 'now')
    _wait(lambda: len(ran) == 4)
    assert ran == ['now', 'soon', 'soon, second', 'slow']


def test_not_before_its_delay():
    later, ran = Later('t-delay'), []
    t0 = time.monotonic()
    later.call(0.2, lambda: ran.append(time.monotonic() - t0))
    _wait(lambda: ran)
    assert ran[0] >= 0.2


def test_a_thousand_calls_one_thread_and_none_once_done():
    later, ran = Later('t-many'), []
    for i in range(1000):
        later.call(0.05, ran.append, i)
    assert len(_threads('t-many')) == 1
    _wait(lambda: len(ran) == 1000)
    assert ran == list(range(1000))
    _wait(lambda: not _threads('t-many'))
    assert later.pending() == 0
    later.call(0, ran.append, 'again')      # a new thread for new work
    _wait(lambda: ran[-1] == 'again')


def test_a_failing_call_is_logged_and_the_next_runs(caplog):
    later, ran = Later('t-fail'), []

    def boom():
        raise RuntimeError('broken check')
    later.call(0, boom)
    later.call(0.01, ran.append, 'next')
    _wait(lambda: ran)
    assert 'broken check' in caplog.text
