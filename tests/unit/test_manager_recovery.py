"""The instance manager: changes nobody asked for (lifecycle events, the
power sync) and recovery after a kill mid-operation (see test_manager.py
for the setting)."""

import os

import pytest

from compute_agent import exception
from compute_agent import states

try:
    from tests.unit import manager_fixtures as mf
    from tests.unit.manager_checks import h  # noqa: F401
    from tests.unit.manager_checks import (
        HARD, S, SOFT, bring_to, check_report, check_report_stream,
        expect_libvirt, triple)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf
    from manager_checks import h  # noqa: F401
    from manager_checks import (
        HARD, S, SOFT, bring_to, check_report, check_report_stream,
        expect_libvirt, triple)


# --- 7. changes nobody asked for ---------------------------------------------------

def test_lifecycle_event_stop_behind_the_managers_back(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    h.domain(uuid).destroy()            # through libvirt, not the agent
    seen = len(h.notifier.reports)
    h.manager.on_power_event(uuid, states.SHUTDOWN)
    (report,) = h.notifier.reports[seen:]
    check_report(report, uuid)
    assert report['event'] == 'power.lifecycle'
    assert triple(report) == (states.STOPPED, None, states.SHUTDOWN)
    assert report['request_id'] is None
    record = h.info(uuid)
    assert triple(record) == triple(report)
    # The same event again, or a sync, changes nothing.
    h.manager.on_power_event(uuid, states.SHUTDOWN)
    h.manager.sync_power_states()
    assert len(h.notifier.reports) == seen + 1
    # It is a normal stopped instance now.
    record = h.call('power_on', instance=instance)
    assert triple(record) == (states.ACTIVE, None, states.RUNNING)


def test_lifecycle_events_pause_and_start_behind_the_back(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    h.domain(uuid).suspend()            # libvirt's "suspend" is a pause
    h.manager.on_power_event(uuid, states.PAUSED)
    assert triple(h.notifier.reports[-1]) == (states.PAUSED_VM, None,
                                              states.PAUSED)
    h.domain(uuid).resume()
    h.manager.on_power_event(uuid, states.RUNNING)
    assert triple(h.notifier.reports[-1]) == (states.ACTIVE, None,
                                              states.RUNNING)
    h.domain(uuid).destroy()
    h.manager.on_power_event(uuid, states.SHUTDOWN)
    h.domain(uuid).create()
    h.manager.on_power_event(uuid, states.RUNNING)
    events = [(r['event'], r['vm_state'], r['power_state'])
              for r in h.notifier.for_uuid(uuid)[2:]]
    assert events == [('power.lifecycle', 'paused', 3),
                      ('power.lifecycle', 'active', 1),
                      ('power.lifecycle', 'stopped', 4),
                      ('power.lifecycle', 'active', 1)]


def test_no_lifecycle_report_while_an_operation_is_in_flight(h, monkeypatch):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    real_power_off = h.driver.power_off
    seen_task = []

    def power_off(inst, timeout=60):
        result = real_power_off(inst, timeout)
        seen_task.append(h.journal.get_instance(uuid)['task_state'])
        h.manager.on_power_event(uuid, states.SHUTDOWN)   # libvirt's event
        h.manager.sync_power_states()
        return result
    monkeypatch.setattr(h.driver, 'power_off', power_off)
    h.call('power_off', instance=instance)
    assert seen_task == ['powering-off']
    assert [r['event'] for r in h.notifier.for_uuid(uuid)] == [
        'spawn.start', 'spawn.end', 'power_off.start', 'power_off.end']


def test_sync_power_states_reports_an_unreported_change(h):
    instance, _ = h.spawn()
    quiet, _ = h.spawn()
    uuid = instance['uuid']
    h.domain(uuid).destroy()            # no event delivered
    seen = len(h.notifier.reports)
    h.manager.sync_power_states()
    (report,) = h.notifier.reports[seen:]
    check_report(report, uuid)
    assert report['event'] == 'power.sync'
    assert triple(report) == (states.STOPPED, None, states.SHUTDOWN)
    assert triple(h.info(uuid)) == triple(report)
    assert h.info(quiet['uuid'])['vm_state'] == states.ACTIVE
    h.manager.sync_power_states()
    assert len(h.notifier.reports) == seen + 1


def test_events_for_unknown_uuids_are_ignored(h):
    instance, _ = h.spawn()
    seen = len(h.notifier.reports)
    h.manager.on_power_event(mf.new_uuid(), states.SHUTDOWN)
    h.manager.on_power_event(mf.new_uuid())
    for dom in h.conn.listAllDomains(0):    # e.g. test:///default's own
        if dom.UUIDString() != instance['uuid']:
            h.manager.on_power_event(dom.UUIDString(), states.RUNNING)
    assert len(h.notifier.reports) == seen
    assert h.call('list_instances') == [h.info(instance['uuid'])]


def test_real_libvirt_events(tmp_path):
    """Lifecycle events from libvirt itself: none is reported for the
    agent's own operations, one for a stop behind its back."""
    h = mf.Harness(tmp_path, events=True)
    try:
        instance, _ = h.spawn()
        uuid = instance['uuid']
        for method in ('pause', 'unpause', 'power_off', 'power_on'):
            h.call(method, instance=instance)
        h.domain(uuid).destroy()
        report = h.notifier.wait_for(
            lambda r: r['instance_uuid'] == uuid
            and r['event'] == 'power.lifecycle')
        assert report is not None, 'no power.lifecycle report within 5 s'
        assert triple(report) == (states.STOPPED, None, states.SHUTDOWN)
        events = [r['event'] for r in h.notifier.for_uuid(uuid)]
        assert events == ['spawn.start', 'spawn.end', 'pause.start',
                          'pause.end', 'unpause.start', 'unpause.end',
                          'power_off.start', 'power_off.end',
                          'power_on.start', 'power_on.end', 'power.lifecycle']
        check_report_stream(h.notifier.reports)
    finally:
        h.close()


# --- 8. recovery after a kill mid-operation --------------------------------------

def test_recover_settles_records_left_mid_operation(h):
    h.check_repeats = False     # forced records are, by design, not reported
    # spawning, and the domain came up: active
    up = bring_to(h, states.ACTIVE)
    h.force_record(up['uuid'], vm_state=states.BUILDING, task_state='spawning',
                   power_state=states.NOSTATE, devices={})
    # spawning, and no domain yet: error with a reason
    down = bring_to(h, states.ACTIVE)
    dom = h.domain(down['uuid'])
    dom.destroy()
    dom.undefine()
    h.force_record(down['uuid'], vm_state=states.BUILDING,
                   task_state='spawning', power_state=states.NOSTATE)
    # deleting: the destroy is finished
    gone = bring_to(h, states.ACTIVE)
    h.force_record(gone['uuid'], task_state='deleting')
    # rebooting, and the domain is shut off: rolled forward, running
    off = bring_to(h, states.ACTIVE)
    h.domain(off['uuid']).destroy()
    h.force_record(off['uuid'], task_state='rebooting')
    # idle and consistent: nothing to say
    idle = bring_to(h, states.PAUSED_VM)

    seen = len(h.notifier.reports)
    # A new agent process: a new Manager over the same journal and host.
    manager = type(h.manager)(h.conf, h.driver, h.journal, h.notifier)
    manager.recover()
    reports = {r['instance_uuid']: r for r in h.notifier.reports[seen:]}
    assert len(h.notifier.reports) - seen == len(reports) == 4
    for uuid, r in reports.items():
        check_report(r, uuid)
        assert r['event'] == 'recover'
        assert r['request_id'] is None

    assert triple(reports[up['uuid']]) == (states.ACTIVE, None, states.RUNNING)
    assert reports[up['uuid']]['error'] is None
    assert h.info(up['uuid'])['devices'] == {'root': 'vda'}
    assert triple(h.info(up['uuid'])) == (states.ACTIVE, None, states.RUNNING)
    expect_libvirt(h, up['uuid'], states.RUNNING)

    r = reports[down['uuid']]
    assert triple(r) == (states.ERROR, None, states.NOSTATE)
    assert r['error']['class'] and 'spawning' in r['error']['message']
    assert h.info(down['uuid'])['error'] == r['error']

    assert triple(reports[gone['uuid']]) == (states.DELETED, None,
                                             states.NOSTATE)
    with pytest.raises(exception.InstanceNotFound):
        h.info(gone['uuid'])
    assert h.domain(gone['uuid']) is None
    assert not os.path.exists(h.instance_dir(gone))

    assert triple(reports[off['uuid']]) == (states.ACTIVE, None,
                                            states.RUNNING)
    assert triple(h.info(off['uuid'])) == (states.ACTIVE, None,
                                           states.RUNNING)
    expect_libvirt(h, off['uuid'], states.RUNNING)
    assert idle['uuid'] not in reports

    # Every settled instance takes requests again.
    h.spawn(down)
    assert h.info(down['uuid'])['vm_state'] == states.ACTIVE
    h.call('reboot', instance=off)
    h.call('pause', instance=up)
    # A second recover finds nothing to do.
    seen = len(h.notifier.reports)
    manager.recover()
    assert len(h.notifier.reports) == seen


def _off(h, uuid):
    h.domain(uuid).destroy()


def _undefine(h, uuid):
    dom = h.domain(uuid)
    dom.destroy()
    dom.undefine()


# A request interrupted by a kill, as the killed agent left it: (method,
# extra args, start vm_state, task_state in the record, what had happened
# to the guest, (vm_state, power_state) recovery settles on, the end the
# redelivered request replies with). docs: protocol-delivery.
INTERRUPTED = [
    ('pause', {}, S.ACTIVE, 'pausing', lambda h, u: h.domain(u).suspend(),
     (S.PAUSED_VM, S.PAUSED), (S.PAUSED_VM, S.PAUSED)),
    ('pause', {}, S.ACTIVE, 'pausing', None,
     (S.ACTIVE, S.RUNNING), (S.PAUSED_VM, S.PAUSED)),
    ('power_off', {}, S.ACTIVE, 'powering-off', _off,
     (S.STOPPED, S.SHUTDOWN), (S.STOPPED, S.SHUTDOWN)),
    ('power_off', {}, S.RESCUED, 'powering-off', _off,
     (S.STOPPED, S.SHUTDOWN), (S.STOPPED, S.SHUTDOWN)),
    ('suspend', {}, S.ACTIVE, 'suspending', lambda h, u: h.domain(u).managedSave(0),
     (S.SUSPENDED_VM, S.SUSPENDED), (S.SUSPENDED_VM, S.SUSPENDED)),
    # A reboot that had stopped the guest is rolled forward: running.
    ('reboot', SOFT, S.ACTIVE, 'rebooting', _off,
     (S.ACTIVE, S.RUNNING), (S.ACTIVE, S.RUNNING)),
    ('reboot', HARD, S.STOPPED, 'rebooting_hard', None,
     (S.ACTIVE, S.RUNNING), (S.ACTIVE, S.RUNNING)),
    ('power_on', {}, S.STOPPED, 'powering-on', None,
     (S.ACTIVE, S.RUNNING), (S.ACTIVE, S.RUNNING)),
    ('power_on', {}, S.RESCUED, 'powering-on', _off,
     (S.RESCUED, S.RUNNING), (S.RESCUED, S.RUNNING)),
    # A rescue is rolled back; its redelivery rescues again.
    ('rescue', {}, S.RESCUED, 'rescuing', None,
     (S.ACTIVE, S.RUNNING), (S.RESCUED, S.RUNNING)),
    ('rescue', {}, S.RESCUED, 'rescuing', _off,
     (S.ACTIVE, S.RUNNING), (S.RESCUED, S.RUNNING)),
    ('unrescue', {}, S.RESCUED, 'unrescuing', None,
     (S.ACTIVE, S.RUNNING), (S.ACTIVE, S.RUNNING)),
    ('spawn', {}, S.ACTIVE, 'spawning', _undefine,
     (S.ERROR, S.NOSTATE), (S.ACTIVE, S.RUNNING)),
    ('spawn', {}, S.ACTIVE, 'spawning', _off,
     (S.ERROR, S.SHUTDOWN), (S.ACTIVE, S.RUNNING)),
    ('spawn', {}, S.ACTIVE, 'spawning', None,
     (S.ACTIVE, S.RUNNING), (S.ACTIVE, S.RUNNING)),
]


@pytest.mark.parametrize('case', INTERRUPTED, ids=[
    '%s-from-%s-guest-%s' % (c[0], c[2], c[4].__name__ if c[4] else 'untouched')
    for c in INTERRUPTED])
def test_recover_then_redelivery_finishes_an_interrupted_operation(h, case):
    h.check_repeats = False     # forced records are, by design, not reported
    method, extra, start, task, guest_did, settled, end = case
    instance = bring_to(h, start)
    uuid = instance['uuid']
    if guest_did is not None:
        guest_did(h, uuid)
    # The killed agent's record: mid-operation, as its .start report said.
    ctx = mf.context()
    record = h.force_record(uuid, task_state=task,
                            task_request_id=ctx['request_id'])
    if method == 'spawn':
        h.force_record(uuid, vm_state=states.BUILDING, power_state=states.NOSTATE)
    elif method == 'power_on' and start == states.RESCUED:
        h.force_record(uuid, vm_state=states.STOPPED, power_state=states.SHUTDOWN)
    elif method == 'rescue':       # the rescue had begun on an active guest
        h.force_record(uuid, vm_state=states.ACTIVE, rescue=None)
    assert record['task_state'] == task

    manager = type(h.manager)(h.conf, h.driver, h.journal, h.notifier)
    manager.recover()
    after = h.info(uuid)
    assert (after['vm_state'], after['power_state']) == settled
    assert after['task_state'] is None
    expect_libvirt(h, uuid, settled[1])
    if method in ('rescue', 'unrescue'):
        assert not h.driver.is_rescued(instance)

    h.manager = manager
    if method == 'pause' and settled[0] == states.PAUSED_VM:
        # Another request (not the redelivery) is judged by the state alone.
        with pytest.raises(exception.InstanceInvalidState):
            h.call(method, instance=instance, **extra)
    # The redelivery (the same request): success, ending where the
    # operation ends.
    if method == 'spawn':
        _inst, result = h.spawn(instance, ctx=ctx)
    else:
        result = h.call(method, ctx=ctx, instance=instance, **extra)
    assert triple(result) == end[:1] + (None,) + end[1:]
    assert result['error'] is None
    assert h.info(uuid) == result
    expect_libvirt(h, uuid, end[1])
    if method in ('rescue', 'unrescue'):
        assert h.driver.is_rescued(instance) == (method == 'rescue')
    if method == 'spawn':
        assert result['devices'] == {'root': 'vda'}
    # ... and the mark is gone: the same request again is judged afresh.
    if method == 'pause':
        with pytest.raises(exception.InstanceInvalidState):
            h.call(method, ctx=ctx, instance=instance, **extra)


def test_recover_upgrades_records_kept_before_the_rescue_key(h):
    """An older agent did not keep the rescue request in the record; the
    guest's own files say whether it is rescued."""
    rescued, plain = bring_to(h, states.RESCUED), bring_to(h, states.ACTIVE)
    for instance in (rescued, plain):
        record = h.journal.get_instance(instance['uuid'])
        del record['rescue']
        h.journal.save_instance(instance['uuid'], record)
    seen = len(h.notifier.reports)
    h.manager.recover()
    assert len(h.notifier.reports) == seen          # no state changed
    assert h.journal.get_instance(rescued['uuid'])['rescue'] == {
        'rescue_image_meta': None}
    assert h.journal.get_instance(plain['uuid'])['rescue'] is None
    h.call('power_off', instance=rescued, timeout=0)
    assert h.call('power_on', instance=rescued)['vm_state'] == states.RESCUED


def test_recover_reports_drift_of_idle_records(h):
    instance = bring_to(h, states.ACTIVE)
    h.domain(instance['uuid']).destroy()
    seen = len(h.notifier.reports)
    h.manager.recover()
    (report,) = h.notifier.reports[seen:]
    assert report['event'] == 'recover'
    assert triple(report) == (states.STOPPED, None, states.SHUTDOWN)


def test_redelivered_destroy_after_recovery_finished_it(h):
    """Recovery finishes an interrupted destroy and the record goes; its
    redelivery still gets the destroy's outcome, another request does not."""
    h.check_repeats = False     # forced records are, by design, not reported
    instance = bring_to(h, states.ACTIVE)
    uuid = instance['uuid']
    ctx = mf.context()
    h.force_record(uuid, task_state='deleting', task_request_id=ctx['request_id'])
    manager = type(h.manager)(h.conf, h.driver, h.journal, h.notifier)
    manager.recover()
    h.manager = manager
    assert h.domain(uuid) is None
    result = h.call('destroy', ctx=ctx, instance={'uuid': uuid})
    assert (result['uuid'], result['vm_state'], result['task_state'],
            result['power_state']) == (uuid, states.DELETED, None, states.NOSTATE)
    with pytest.raises(exception.InstanceNotFound):
        h.call('destroy', ctx=mf.context(), instance={'uuid': uuid})
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
