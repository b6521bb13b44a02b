"""compute_agent/keyed_locks.py: one lock per key while in use, then none."""

import threading

from compute_agent.keyed_locks import KeyedLocks


def test_same_key_excludes_other_threads_and_is_reentrant():
    locks = KeyedLocks()
    order = []

    def other():
        with locks('a'):
            order.append('other')

    with locks('a'):
        with locks('a'):                # re-entrant in one thread
            t = threading.Thread(target=other)
            t.start()
            t.join(0.2)
            assert t.is_alive()         # waits for the holder
            order.append('holder')
    t.join(5)
    assert order == ['holder', 'other']


def test_different_keys_do_not_wait():
    locks = KeyedLocks()
    done = threading.Event()

    def other():
        with locks('b'):
            done.set()

    with locks('a'):
        threading.Thread(target=other).start()
        assert done.wait(5)


def test_entries_go_once_unused_even_after_an_error():
    locks = KeyedLocks()
    for i in range(100):
        with locks('u%d' % i):
            assert len(locks) == 1
    assert len(locks) == 0
    try:
        with locks('x'):
            raise ValueError('boom')
    except ValueError:
        pass
    assert len(locks) == 0
    with locks('x'):                    # usable again
        assert len(locks) == 1


def test_without_blocking_it_says_whether_it_got_the_lock():
    locks = KeyedLocks()
    got = []

    def other():
        with locks('a', blocking=False) as held:
            got.append(held)

    with locks('a') as held:
        assert held
        t = threading.Thread(target=other)
        t.start()
        t.join(5)
        with locks('a', blocking=False) as again:    # re-entrant: its own
            assert again
    assert got == [False] and len(locks) == 0
    other()
    assert got == [False, True] and len(locks) == 0
