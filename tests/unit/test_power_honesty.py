"""Honest power reports on test:///default (docs: protocol, reports).

- libvirt that cannot be asked gives one ``power.unknown`` report per
  instance (power_state 0, vm_state kept), never an inferred stop, and the
  next sync that reaches libvirt corrects it as ``power.sync``;
- ``power_checked_at`` moves only when libvirt answered;
- a STOPPED event is reported only if the stop still holds after
  ``[libvirt] stopped_event_delay``.

Making libvirt unreachable: the driver's URI is pointed at a socket that
does not exist and its open connections are dropped, so every call fails as
it does when libvirtd is down (the real case is in
tests/functional/test_e2e_honest_power.py).
"""

import threading
import time
import uuid as uuidlib

from compute_agent import states

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf

UNREACHABLE = 'test+unix:///default?socket=/nonexistent/compute-agent-test.sock'


def triple(r):
    return (r['vm_state'], r['task_state'], r['power_state'])


def _events(h, uuid, since):
    return [(r['event'],) + triple(r) for r in h.notifier.reports[since:]
            if r['instance_uuid'] == uuid]


def _cut_libvirt(h):
    uri = h.driver.connection.uri
    h.driver.connection.uri = UNREACHABLE
    for slot in h.driver.connection._slots:
        slot.conn = None
    return uri


h = mf.h     # the plain harness fixture


def test_unreachable_libvirt_is_unknown_never_stopped(h):
    h.conf.set_override('connect_retries', 1, 'libvirt')
    active, _ = h.spawn()
    stopped, _ = h.spawn()
    h.call('power_off', instance=stopped, timeout=0)
    checked = {i['uuid']: h.info(i['uuid'])['power_checked_at'] for i in (active, stopped)}
    assert all(checked.values())
    since = len(h.notifier.reports)
    uri = _cut_libvirt(h)
    h.manager.sync_power_states()
    h.manager.sync_power_states()            # once only
    assert _events(h, active['uuid'], since) == [
        ('power.unknown', states.ACTIVE, None, states.NOSTATE)]
    assert _events(h, stopped['uuid'], since) == [
        ('power.unknown', states.STOPPED, None, states.NOSTATE)]
    for inst in (active, stopped):
        assert h.info(inst['uuid'])['power_checked_at'] == checked[inst['uuid']]
    # A lifecycle event while libvirt cannot be asked: unknown, not stopped.
    h.manager.on_power_event(active['uuid'], states.RUNNING)
    assert len(h.notifier.reports) == since + 2

    h.driver.connection.uri = uri
    mark = len(h.notifier.reports)
    h.manager.sync_power_states()
    assert _events(h, active['uuid'], mark) == [
        ('power.sync', states.ACTIVE, None, states.RUNNING)]
    assert _events(h, stopped['uuid'], mark) == [
        ('power.sync', states.STOPPED, None, states.SHUTDOWN)]
    for inst in (active, stopped):
        assert h.info(inst['uuid'])['power_checked_at'] > checked[inst['uuid']]


def test_a_sync_that_changes_nothing_still_confirms(h):
    inst, _ = h.spawn()
    first = h.info(inst['uuid'])['power_checked_at']
    time.sleep(0.01)
    seen = len(h.notifier.reports)
    h.manager.sync_power_states()
    assert len(h.notifier.reports) == seen
    assert h.info(inst['uuid'])['power_checked_at'] > first
    assert h.call('list_instances')[0]['power_checked_at'] == \
        h.info(inst['uuid'])['power_checked_at']


def test_a_sync_does_not_apply_a_listing_older_than_the_record(h):
    """A record changed after the sync listed the domains is asked again."""
    inst, _ = h.spawn()
    stale = {inst['uuid']: states.SHUTDOWN}
    seen = len(h.notifier.reports)
    h.manager._reconcile(inst['uuid'], 'power.sync', only_idle=True,
                         listing=stale, listed_at='1970-01-01T00:00:00+00:00')
    assert len(h.notifier.reports) == seen      # libvirt says running


def test_stops_of_many_guests_wait_on_one_thread(h):
    """A stop event per guest of a whole host: their checks wait on one
    thread (compute_agent/later.py), not on a timer thread each."""
    h.conf.set_override('stopped_event_delay', 0.3, 'libvirt')
    before = threading.active_count()
    for _ in range(200):
        h.manager.on_power_event(str(uuidlib.uuid4()), states.SHUTDOWN)
    assert (threading.active_count() - before, h.manager._later.pending()) == (1, 200)
    deadline = time.monotonic() + 10
    while h.manager._later.pending() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert h.manager._later.pending() == 0


def test_a_busy_instance_holds_up_no_other_guests_events(tmp_path):
    """Events and stop checks each share one thread: an instance locked by
    an operation (a cold migration holds it for minutes) is looked at again
    later instead of waited for, so another guest's stop is reported on
    time; the busy one's once its lock is free."""
    h = mf.Harness(tmp_path)
    try:
        h.conf.set_override('stopped_event_delay', 0.2, 'libvirt')
        (busy, _), (other, _) = h.spawn(), h.spawn()
        since = len(h.notifier.reports)
        release, holding = threading.Event(), threading.Event()

        def operation():
            with h.manager._lock(busy['uuid']):
                holding.set()
                release.wait(30)
        threading.Thread(target=operation, daemon=True).start()
        assert holding.wait(5)
        event = threading.Thread(target=h.manager.on_power_event,
                                 args=(busy['uuid'], states.RUNNING))
        event.start()
        event.join(2)
        assert not event.is_alive()        # the events thread went on
        for inst in (busy, other):
            h.domain(inst['uuid']).destroy()
            h.manager.on_power_event(inst['uuid'], states.SHUTDOWN)
        stopped = ('power.lifecycle', states.STOPPED, None, states.SHUTDOWN)
        assert h.notifier.wait_for(lambda r: r['instance_uuid'] == other['uuid']
                                   and r['event'] == 'power.lifecycle', timeout=5)
        assert _events(h, other['uuid'], since) == [stopped]
        assert _events(h, busy['uuid'], since) == []
        release.set()
        assert h.notifier.wait_for(lambda r: r['instance_uuid'] == busy['uuid']
                                   and r['event'] == 'power.lifecycle', timeout=5)
        assert _events(h, busy['uuid'], since) == [stopped]
    finally:
        h.close()


def test_a_stop_found_by_another_event_is_debounced_too(tmp_path):
    """A late start event whose look lands in a short stop: the stop is
    not reported at once but checked again after the delay; one that
    held is then reported, one that ended is not. The check runs here
    when the test says (the timer itself: the test below)."""
    h = mf.Harness(tmp_path)
    try:
        h.conf.set_override('stopped_event_delay', 0.3, 'libvirt')
        inst, _ = h.spawn()
        uuid = inst['uuid']
        later = []
        h.manager._check_later = lambda u, delay: later.append((u, delay))

        def check():        # what the timer runs once the delay is over
            h.manager._reconcile(uuid, 'power.lifecycle', True)

        since = len(h.notifier.reports)
        dom = h.domain(uuid)
        dom.destroy()
        h.manager.on_power_event(uuid, states.RUNNING)   # late, stale
        assert (_events(h, uuid, since), later) == ([], [(uuid, 0.3)])
        dom.create()
        check()
        assert _events(h, uuid, since) == []             # it did not hold
        dom.destroy()
        h.manager.on_power_event(uuid, states.RUNNING)
        assert (_events(h, uuid, since), len(later)) == ([], 2)
        check()
        assert _events(h, uuid, since) == [
            ('power.lifecycle', states.STOPPED, None, states.SHUTDOWN)]
    finally:
        h.close()


def test_stop_reported_only_when_it_holds(tmp_path):
    h = mf.Harness(tmp_path, events=True)
    try:
        delay = 1.0
        h.conf.set_override('stopped_event_delay', delay, 'libvirt')
        inst, _ = h.spawn()
        uuid = inst['uuid']
        since = len(h.notifier.reports)
        dom = h.domain(uuid)
        began = time.monotonic()
        dom.destroy()               # a reboot as some hypervisors show it
        dom.create()
        gap = time.monotonic() - began
        time.sleep(delay + 1.0)     # past the delay: the check has run
        seen = _events(h, uuid, since)
        if gap < delay:
            # The check runs at least `delay` after the stop, so it found
            # the guest running again: nothing to report.
            assert seen == []
        else:
            # A stalled machine kept the guest stopped past the delay: the
            # check may have seen the stop hold, and then both are true.
            assert seen in ([], [
                ('power.lifecycle', states.STOPPED, None, states.SHUTDOWN),
                ('power.lifecycle', states.ACTIVE, None, states.RUNNING)])
        dom.destroy()               # a real stop
        report = h.notifier.wait_for(
            lambda r: r['instance_uuid'] == uuid and r['event'] == 'power.lifecycle')
        assert report is not None
        assert triple(report) == (states.STOPPED, None, states.SHUTDOWN)
    finally:
        h.close()
