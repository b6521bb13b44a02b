"""The instance manager: state machine, reports, errors, events, recovery.

Everything is real: the Manager, the LibvirtDriver on libvirt's in-process
``test:///default`` driver, the SQLite Journal, a file:// image store with
qcow2 images made by qemu-img. Only the notifier is a capturing stand-in.
Expectations come from the docs (protocol-methods, protocol-reports, protocol-states,
5 errors), written out as cases: the tests never read ``states``' table.
"""

import logging
import os
import threading
import time

import libvirt
import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent import validation
from compute_agent import version

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf


@pytest.fixture
def h(tmp_path):
    harness = mf.Harness(tmp_path)
    harness.check_reports = True        # sequences and repeated states
    harness.check_repeats = True
    yield harness
    try:
        if harness.check_reports:
            check_report_stream(harness.notifier.reports,
                                harness.check_repeats)
    finally:
        harness.close()


# --- helpers -----------------------------------------------------------------

def triple(report_or_record):
    return (report_or_record['vm_state'], report_or_record['task_state'],
            report_or_record['power_state'])


def check_report(report, uuid, ctx=None):
    """One report's shape and values (docs: protocol-reports)."""
    assert set(report) == mf.REPORT_KEYS, report
    assert report['host'] == mf.HOST
    assert report['instance_uuid'] == uuid
    assert report['vm_state'] in mf.VM_STATES
    assert report['task_state'] in mf.TASK_STATES
    assert report['power_state'] in mf.POWER_STATES
    assert isinstance(report['sequence'], int)
    mf.parse_timestamp(report['timestamp'])
    if ctx is not None:
        assert report['request_id'] == ctx['request_id']
    error = report['error']
    assert error is None or (set(error) == {'class', 'message'}
                             and isinstance(error['message'], str))


def check_report_stream(reports, repeats=True):
    """Per instance: sequences strictly increase, and (``repeats``) no report
    repeats the (vm_state, task_state, power_state) of the one before it."""
    by_uuid = {}
    for r in reports:
        by_uuid.setdefault(r['instance_uuid'], []).append(r)
    for uuid, rs in by_uuid.items():
        seqs = [r['sequence'] for r in rs]
        assert seqs == sorted(set(seqs)), (uuid, seqs)
        for a, b in zip(rs, rs[1:]) if repeats else ():
            assert triple(a) != triple(b), (uuid, a, b)


def new_reports(h, uuid, since):
    return h.notifier.for_uuid(uuid)[since:]


def expect_libvirt(h, uuid, power_state):
    """libvirt's own view of the domain agrees with ``power_state``."""
    if power_state == states.NOSTATE:
        assert h.domain(uuid) is None
        return
    assert h.libvirt_state(uuid) == mf.LIBVIRT_STATE[power_state]
    assert h.driver.get_power_state({'uuid': uuid}) == power_state


def bring_to(h, vm_state):
    """A new instance in ``vm_state`` (None: one that was never spawned)."""
    instance = mf.make_instance()
    if vm_state is None:
        return instance
    h.spawn(instance)
    if vm_state == states.PAUSED_VM:
        h.call('pause', instance=instance)
    elif vm_state == states.SUSPENDED_VM:
        h.call('suspend', instance=instance)
    elif vm_state == states.STOPPED:
        h.call('power_off', instance=instance)
    elif vm_state == states.RESCUED:
        h.call('rescue', instance=instance)
    elif vm_state == states.ERROR:
        # Only a failure after the guest was changed leaves error (docs:
        # protocol-failure-unchanged): the guest is restarted as it was and the record
        # says error, as a rescue whose boot failed leaves it.
        h.force_record(instance['uuid'], vm_state=states.ERROR,
                       error={'class': 'AgentError', 'message': 'forged'})
    elif vm_state == states.DELETED:
        h.call('destroy', instance=instance)
    elif vm_state == states.BUILDING:
        # Not reachable through requests (spawn holds the instance while it
        # builds); the table allows destroy from it, so forge the record.
        h.force_record(instance['uuid'], vm_state=states.BUILDING,
                       task_state=None)
    else:
        assert vm_state == states.ACTIVE
    if vm_state not in (states.DELETED,):
        assert h.info(instance['uuid'])['vm_state'] == vm_state
    return instance


# Every allowed transition, written out (the protocol docs sections 4-5), not read
# from states.TRANSITIONS: (method, start vm_state, extra args, task_state
# while it runs, end vm_state, end power_state). None: never spawned.
S = states
HARD = {'reboot_type': 'HARD'}
SOFT = {'reboot_type': 'SOFT'}
_CASES = [
    ('spawn', None, {}, 'spawning', S.ACTIVE, S.RUNNING),
    ('spawn', S.DELETED, {}, 'spawning', S.ACTIVE, S.RUNNING),
    ('spawn', S.ERROR, {}, 'spawning', S.ACTIVE, S.RUNNING),
    ('rescue', S.ACTIVE, {}, 'rescuing', S.RESCUED, S.RUNNING),
    ('unrescue', S.RESCUED, {}, 'unrescuing', S.ACTIVE, S.RUNNING),
    ('reboot', S.ACTIVE, SOFT, 'rebooting', S.ACTIVE, S.RUNNING),
    ('reboot', S.ACTIVE, HARD, 'rebooting_hard', S.ACTIVE, S.RUNNING),
    ('reboot', S.STOPPED, HARD, 'rebooting_hard', S.ACTIVE, S.RUNNING),
    ('reboot', S.PAUSED_VM, HARD, 'rebooting_hard', S.ACTIVE, S.RUNNING),
    ('reboot', S.SUSPENDED_VM, HARD, 'rebooting_hard', S.ACTIVE, S.RUNNING),
    ('reboot', S.ERROR, HARD, 'rebooting_hard', S.ACTIVE, S.RUNNING),
    ('power_off', S.ACTIVE, {}, 'powering-off', S.STOPPED, S.SHUTDOWN),
    ('power_off', S.RESCUED, {}, 'powering-off', S.STOPPED, S.SHUTDOWN),
    ('power_off', S.ERROR, {}, 'powering-off', S.STOPPED, S.SHUTDOWN),
    ('power_on', S.STOPPED, {}, 'powering-on', S.ACTIVE, S.RUNNING),
    ('pause', S.ACTIVE, {}, 'pausing', S.PAUSED_VM, S.PAUSED),
    ('unpause', S.PAUSED_VM, {}, 'unpausing', S.ACTIVE, S.RUNNING),
    ('suspend', S.ACTIVE, {}, 'suspending', S.SUSPENDED_VM, S.SUSPENDED),
    ('resume', S.SUSPENDED_VM, {}, 'resuming', S.ACTIVE, S.RUNNING),
] + [('destroy', start, {}, 'deleting', S.DELETED, S.NOSTATE)
     for start in (S.BUILDING, S.ACTIVE, S.STOPPED, S.PAUSED_VM,
                   S.SUSPENDED_VM, S.RESCUED, S.ERROR)]


def _case_id(case):
    method, start, args, *_ = case
    return '%s%s-from-%s' % (method, '-' + args['reboot_type'].lower()
                             if args else '', start)


TRANSITION_CASES = [
    pytest.param(case, id=_case_id(case)) for case in _CASES]


# --- 1. every transition -------------------------------------------------------

@pytest.mark.parametrize('case', TRANSITION_CASES)
def test_transition_reports_record_and_libvirt(h, case):
    method, start, extra, task, end_vm_state, end_power_state = case
    instance = bring_to(h, start)
    uuid = instance['uuid']
    if start in (None, states.DELETED):
        before = {'vm_state': None, 'power_state': states.NOSTATE}
    else:
        before = h.info(uuid)
    seen = len(h.notifier.for_uuid(uuid))
    last_seq = max([r['sequence'] for r in h.notifier.for_uuid(uuid)], default=0)
    ctx = mf.context()
    calls_before = len(h.notifier.calls)

    if method == 'spawn':
        _inst, result = h.spawn(instance, ctx=ctx)
    else:
        result = h.call(method, ctx=ctx, instance=instance, **extra)

    reports = new_reports(h, uuid, seen)
    assert [r['event'] for r in reports] == [method + '.start', method + '.end']
    for r in reports:
        check_report(r, uuid, ctx)
    # The request's context travels with its reports (its _context_* keys).
    for context, _fields in h.notifier.calls[calls_before:]:
        assert context == ctx
    start_report, end_report = reports
    if method == 'spawn':
        assert triple(start_report) == (states.BUILDING, 'spawning',
                                        states.NOSTATE)
    else:
        assert triple(start_report) == (before['vm_state'], task,
                                        before['power_state'])
    assert triple(end_report) == (end_vm_state, None, end_power_state)
    assert end_report['error'] is None
    seqs = [r['sequence'] for r in reports]
    assert last_seq < seqs[0] < seqs[1]
    assert (mf.parse_timestamp(start_report['timestamp'])
            <= mf.parse_timestamp(end_report['timestamp']))

    # The final record: returned, agreeing with get_info and with libvirt.
    assert set(result) == mf.RECORD_KEYS
    assert result['uuid'] == uuid and result['name'] == instance['name']
    assert result['host'] == mf.HOST
    assert triple(result) == triple(end_report)
    assert result['error'] is None
    mf.parse_timestamp(result['created_at'])
    mf.parse_timestamp(result['updated_at'])
    expect_libvirt(h, uuid, end_power_state)
    if method == 'destroy':
        with pytest.raises(exception.InstanceNotFound):
            h.info(uuid)
        assert not os.path.exists(h.instance_dir(instance))
        assert h.call('list_instances') == []
    else:
        assert h.info(uuid) == result
        assert result['devices']['root'] == 'vda'
        assert os.path.isdir(h.instance_dir(instance))


def test_full_lifecycle_sequence_and_request_ids(h):
    """One instance through every operation: one report per change, each
    with its own request's id, sequence 1, 2, 3, ... (nothing is saved
    between these reports without a change)."""
    instance = mf.make_instance()
    uuid = instance['uuid']
    steps = [('spawn', {}), ('pause', {}), ('unpause', {}), ('suspend', {}),
             ('resume', {}), ('reboot', {}), ('reboot', {'reboot_type': 'HARD'}),
             ('power_off', {'timeout': 5}), ('power_on', {}), ('rescue', {}),
             ('unrescue', {}), ('destroy', {})]
    ids = []
    for method, extra in steps:
        ctx = mf.context('req-%s-%d' % (method, len(ids)))
        ids.append(ctx['request_id'])
        if method == 'spawn':
            h.spawn(instance, ctx=ctx)
        else:
            h.call(method, ctx=ctx, instance=instance, **extra)
    reports = h.notifier.for_uuid(uuid)
    assert len(reports) == 2 * len(steps)
    assert [r['request_id'] for r in reports] == [i for i in ids for _ in (0, 1)]
    assert [r['event'] for r in reports] == [
        m + suffix for m, _ in steps for suffix in ('.start', '.end')]
    seqs = [r['sequence'] for r in reports]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1


# --- 2. one report per change --------------------------------------------------

def test_repeated_spawn_of_active_instance_is_a_quiet_success(h):
    instance, first = h.spawn()
    seen = len(h.notifier.reports)
    seq = h.journal.instance_sequence(instance['uuid'])
    _inst, again = h.spawn(instance)
    assert again == first == h.info(instance['uuid'])
    assert len(h.notifier.reports) == seen
    assert h.journal.instance_sequence(instance['uuid']) == seq
    expect_libvirt(h, instance['uuid'], states.RUNNING)


def test_no_report_when_power_state_did_not_change(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    seen = len(h.notifier.reports)
    h.manager.on_power_event(uuid, states.RUNNING)
    h.manager.sync_power_states()
    h.manager.recover()
    assert len(h.notifier.reports) == seen
    assert h.info(uuid)['vm_state'] == states.ACTIVE


# --- 3. operations that make no sense; unknown uuids; destroy ------------------

INVALID_OPS = {
    states.ACTIVE: [('unpause', {}), ('power_on', {}), ('resume', {}),
                    ('unrescue', {})],
    states.STOPPED: [('rescue', {}), ('pause', {}), ('unpause', {}),
                     ('suspend', {}), ('resume', {}), ('power_off', {}),
                     ('reboot', {}), ('unrescue', {}),
                     ('spawn', {})],
    states.PAUSED_VM: [('spawn', {}), ('pause', {}), ('suspend', {}),
                       ('rescue', {}), ('power_on', {}), ('power_off', {}),
                       ('reboot', {}), ('resume', {}), ('unrescue', {})],
    states.SUSPENDED_VM: [('spawn', {}), ('rescue', {}), ('pause', {}),
                          ('unpause', {}), ('suspend', {}), ('power_off', {}),
                          ('power_on', {}), ('reboot', {}), ('unrescue', {})],
    states.RESCUED: [('spawn', {}), ('rescue', {}), ('pause', {}),
                     ('suspend', {}), ('reboot', {}),
                     ('reboot', {'reboot_type': 'HARD'}), ('power_on', {}),
                     ('resume', {}), ('unpause', {})],
    states.ERROR: [('rescue', {}), ('unrescue', {}), ('pause', {}),
                   ('unpause', {}), ('suspend', {}), ('resume', {}),
                   ('power_on', {}), ('reboot', {})],
}


@pytest.mark.parametrize('start', sorted(INVALID_OPS))
def test_operations_that_make_no_sense_change_nothing(h, start):
    instance = bring_to(h, start)
    uuid = instance['uuid']
    record = h.info(uuid)
    domain_state = h.libvirt_state(uuid)
    seq = h.journal.instance_sequence(uuid)
    seen = len(h.notifier.reports)
    for method, extra in INVALID_OPS[start]:
        with pytest.raises(exception.InstanceInvalidState) as err:
            if method == 'spawn':
                h.spawn(instance)
            else:
                h.call(method, instance=instance, **extra)
        assert uuid in err.value.message and start in err.value.message, method
        assert h.info(uuid) == record, method
        assert h.libvirt_state(uuid) == domain_state, method
        assert h.journal.instance_sequence(uuid) == seq, method
        assert len(h.notifier.reports) == seen, method


UUID_METHODS = ('get_info', 'get_console_output', 'get_vnc_console')
VOLUME_ARGS = {
    'attach_volume': {'volume_id': 'vol-1', 'connection_info': {
        'driver_volume_type': 'local', 'data': {'device_path': '/dev/null'}}},
    'detach_volume': {'volume_id': 'vol-1'},
    'attach_interface': {'vif': {'id': 'port-1', 'address': 'fa:16:3e:00:00:01',
                                 'type': 'bridge', 'network': {'bridge': 'br-x'}}},
    'detach_interface': {'vif_id': 'port-1'}}


def _instance_args(method, instance):
    """Args naming ``instance`` for a state-changing method."""
    if method in VOLUME_ARGS:
        return dict(VOLUME_ARGS[method], instance_uuid=instance['uuid'])
    return {'instance': instance}


STATE_CHANGING = ('spawn', 'rescue', 'unrescue', 'reboot', 'power_off',
                  'power_on', 'pause', 'unpause', 'suspend', 'resume',
                  'destroy')
READ_ONLY = ('get_info', 'list_instances', 'get_console_output',
             'get_vnc_console', 'get_host_stats', 'ping')


@pytest.mark.parametrize('method', sorted(
    set(STATE_CHANGING) - {'spawn'}) + list(UUID_METHODS))
def test_unknown_uuid_is_instance_not_found(h, method):
    instance = mf.make_instance()
    if method in UUID_METHODS:
        args = {'instance_uuid': instance['uuid']}
    else:
        args = _instance_args(method, instance)
    with pytest.raises(exception.InstanceNotFound) as err:
        h.call(method, **args)
    assert instance['uuid'] in err.value.message
    assert h.notifier.reports == []
    assert h.domain(instance['uuid']) is None
    assert not os.path.exists(h.conf.instances_path)
    assert h.call('list_instances') == []


def test_destroy_removes_record_and_directory_and_the_uuid_can_spawn_again(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    other, _ = h.spawn()
    h.call('pause', instance=instance)
    assert os.path.isdir(h.instance_dir(instance))
    h.call('destroy', instance=instance)
    assert not os.path.exists(h.instance_dir(instance))
    assert h.domain(uuid) is None
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    assert [r['uuid'] for r in h.call('list_instances')] == [other['uuid']]
    with pytest.raises(exception.InstanceNotFound):
        h.call('destroy', instance=instance)
    last = h.notifier.for_uuid(uuid)[-1]
    assert last['event'] == 'destroy.end' and last['vm_state'] == 'deleted'

    # Spawning the uuid again works; its sequence keeps increasing.
    _inst, record = h.spawn(instance)
    assert record['vm_state'] == states.ACTIVE
    assert record['created_at'] > last['timestamp']
    again = h.notifier.for_uuid(uuid)[-2:]
    assert [r['event'] for r in again] == ['spawn.start', 'spawn.end']
    assert again[0]['sequence'] > last['sequence']
    expect_libvirt(h, uuid, states.RUNNING)
    # The other instance was not touched.
    assert h.info(other['uuid'])['vm_state'] == states.ACTIVE
    expect_libvirt(h, other['uuid'], states.RUNNING)


def test_destroy_without_cleanup_keeps_the_directory(h):
    instance, _ = h.spawn()
    h.call('destroy', instance=instance, cleanup=False)
    assert h.domain(instance['uuid']) is None
    assert os.path.isdir(h.instance_dir(instance))
    with pytest.raises(exception.InstanceNotFound):
        h.info(instance['uuid'])


# --- 4. invalid spawns create nothing ------------------------------------------

def _vif(n=1, **extra):
    vif = {'id': 'port-%d' % n, 'address': 'fa:16:3e:00:00:%02x' % n,
           'type': 'bridge', 'devname': 'tapmgr%d' % n,
           'network': {'bridge': 'br100'}}
    vif.update(extra)
    return vif


INVALID_SPAWNS = [
    ('memory-zero', lambda a: a['instance']['flavor'].update(memory_mb=0),
     'instance.flavor.memory_mb'),
    ('vcpus-string', lambda a: a['instance']['flavor'].update(vcpus='2'),
     'instance.flavor.vcpus'),
    ('name-dotdot', lambda a: a['instance'].update(name='../x'),
     'instance.name'),
    ('name-slash', lambda a: a['instance'].update(name='a/b'),
     'instance.name'),
    ('unknown-vif-type', lambda a: a.update(
        network_info=[_vif(type='no_such_vif')]), 'network_info[0].type'),
    ('bad-mac', lambda a: a.update(
        network_info=[_vif(address='fa:16:3e:00:00')]),
     'network_info[0].address'),
    ('multicast-mac', lambda a: a.update(
        network_info=[_vif(address='01:00:5e:00:00:01')]),
     'network_info[0].address'),
    ('duplicate-mac', lambda a: a.update(
        network_info=[_vif(1), _vif(2, address='fa:16:3e:00:00:01')]),
     'network_info'),
    ('clashing-devices', lambda a: a.update(block_device_info={
        'ephemerals': [{'num': 0, 'device_name': '/dev/vdb', 'size': 1}],
        'swap': {'device_name': '/dev/vdb', 'swap_size': 64}}),
     'block_device_info.swap.device_name'),
    ('root-device-clash', lambda a: a.update(block_device_info={
        'ephemerals': [{'num': 0, 'device_name': '/dev/vda', 'size': 1}]}),
     'block_device_info.ephemerals[0].device_name'),
    ('bad-disk-format', lambda a: a['image_meta'].update(disk_format='vmdk'),
     'image_meta.disk_format'),
]


@pytest.mark.parametrize('mutate,field', [c[1:] for c in INVALID_SPAWNS],
                         ids=[c[0] for c in INVALID_SPAWNS])
def test_invalid_spawn_is_reported_and_creates_nothing(h, mutate, field):
    instance = mf.make_instance()
    uuid = instance['uuid']
    args = {'instance': instance,
            'image_meta': {'id': mf.IMAGE_ID, 'disk_format': 'qcow2'},
            'admin_password': 'not-logged-anywhere'}
    mutate(args)
    with pytest.raises(exception.InvalidRequest) as err:
        h.manager.validate('spawn', args, '1.0')
    exc = err.value
    assert exc.field == field
    assert field in exc.message
    assert 'not-logged-anywhere' not in exc.message
    # The RPC server reports with the error's uuid or the dispatcher's.
    assert (exc.uuid or h.manager.instance_uuid_of('spawn', args)) == uuid
    assert h.manager.key('spawn', {'instance': instance}) == uuid

    ctx = mf.context()
    h.manager.report_invalid('spawn', uuid, exc, ctx)
    (report,) = h.notifier.reports
    check_report(report, uuid, ctx)
    assert report['event'] == 'spawn.error'
    assert report['vm_state'] == states.ERROR
    assert report['error'] == {'class': 'InvalidRequest',
                               'message': exc.message}
    assert h.notifier.calls[0][0] == ctx

    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    assert h.call('list_instances') == []
    assert h.domain(uuid) is None
    assert not os.path.exists(h.conf.instances_path)


def test_report_invalid_for_an_existing_instance_leaves_it_alone(h):
    """A rejected request on a live instance: an error report with a new
    sequence number carrying the unchanged states (docs: protocol-delivery),
    and the record itself unchanged."""
    h.check_repeats = False     # the error report repeats the states
    instance, record = h.spawn()
    uuid = instance['uuid']
    last = h.notifier.for_uuid(uuid)[-1]
    with pytest.raises(exception.InvalidRequest) as err:
        h.manager.validate('reboot', {'instance': instance,
                                      'reboot_type': 'WARM'}, '1.0')
    assert err.value.field == 'reboot_type'
    h.manager.report_invalid('reboot', uuid, err.value, mf.context())
    report = h.notifier.for_uuid(uuid)[-1]
    assert report['event'] == 'reboot.error'
    assert report['vm_state'] == states.ACTIVE
    assert report['power_state'] == states.RUNNING
    assert report['error']['class'] == 'InvalidRequest'
    assert report['sequence'] > last['sequence']
    assert h.info(uuid) == record
    # ... and the next real change still gets a higher number.
    h.call('pause', instance=instance)
    assert h.notifier.for_uuid(uuid)[-2]['sequence'] > report['sequence']


def test_report_invalid_racing_a_destroy_does_not_resurrect_it(h, monkeypatch):
    """The RPC server runs report_invalid beside the instance's own queue.
    Its bump of the sequence must not save the record back after destroy
    deleted it (here it reads the record just before the delete)."""
    instance, _ = h.spawn()
    uuid = instance['uuid']
    error = exception.InvalidRequest('reboot_type', 'bad', uuid=uuid)
    real_get, real_delete = h.journal.get_instance, h.journal.delete_instance
    has_read = threading.Event()
    worker = threading.Thread(target=h.manager.report_invalid,
                              args=('reboot', uuid, error, mf.context()))

    def get_instance(u):
        record = real_get(u)
        if threading.current_thread() is worker:
            has_read.set()
            time.sleep(0.2)     # ... while the destroy deletes
        return record

    def delete_instance(u):
        worker.start()
        has_read.wait(0.3)      # with the lock held, it cannot read now
        real_delete(u)
    monkeypatch.setattr(h.journal, 'get_instance', get_instance)
    monkeypatch.setattr(h.journal, 'delete_instance', delete_instance)
    h.call('destroy', instance=instance)
    worker.join(5)
    monkeypatch.undo()
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    assert h.call('list_instances') == []


def test_report_invalid_after_destroy_gets_a_new_sequence(h):
    h.check_reports = False
    instance, _ = h.spawn()
    uuid = instance['uuid']
    h.call('destroy', instance=instance)
    last = h.notifier.for_uuid(uuid)[-1]
    error = exception.InvalidRequest('instance.name', 'bad', uuid=uuid)
    h.manager.report_invalid('spawn', uuid, error, mf.context())
    h.manager.report_invalid('spawn', uuid, error, mf.context())
    first, second = h.notifier.for_uuid(uuid)[-2:]
    assert last['sequence'] < first['sequence'] < second['sequence']


# --- 5. driver failures ----------------------------------------------------------

def test_missing_image_then_retry_after_it_appears(h):
    image_id = 'img-late-' + mf.new_uuid()[:8]
    instance = mf.make_instance(image_ref=image_id)
    uuid = instance['uuid']
    ctx = mf.context()
    with pytest.raises(exception.ImageNotFound) as err:
        h.spawn(instance, ctx=ctx)
    reports = h.notifier.for_uuid(uuid)
    assert [r['event'] for r in reports] == ['spawn.start', 'spawn.error']
    for r in reports:
        check_report(r, uuid, ctx)
    error = {'class': 'ImageNotFound', 'message': err.value.message}
    assert triple(reports[1]) == (states.ERROR, None, states.NOSTATE)
    assert reports[1]['error'] == error
    record = h.info(uuid)       # the record is kept, in error
    assert triple(record) == (states.ERROR, None, states.NOSTATE)
    assert record['error'] == error
    assert h.domain(uuid) is None
    assert not os.path.exists(h.instance_dir(instance))

    # The image appears: a retry (error -> spawn is allowed) succeeds.
    mf.make_image(os.path.join(h.store, image_id))
    _inst, record = h.spawn(instance, ctx=ctx)
    assert triple(record) == (states.ACTIVE, None, states.RUNNING)
    assert record['error'] is None and h.info(uuid) == record
    reports = h.notifier.for_uuid(uuid)
    assert [r['event'] for r in reports] == [
        'spawn.start', 'spawn.error', 'spawn.start', 'spawn.end']
    assert reports[3]['error'] is None
    expect_libvirt(h, uuid, states.RUNNING)

    # An error instance can also simply be destroyed.
    h.call('destroy', instance=instance)
    assert h.domain(uuid) is None


def test_destroy_of_a_failed_spawn(h):
    instance = mf.make_instance(image_ref='img-never')
    with pytest.raises(exception.ImageNotFound):
        h.spawn(instance)
    record = h.call('destroy', instance=instance)
    assert triple(record) == (states.DELETED, None, states.NOSTATE)
    with pytest.raises(exception.InstanceNotFound):
        h.info(instance['uuid'])


@pytest.mark.parametrize('location', ['ftp://images.example.com/img',
                                      'file:///etc/passwd'])
def test_disallowed_image_location_leaves_nothing(h, location):
    instance = mf.make_instance()
    uuid = instance['uuid']
    args = {'instance': instance,
            'image_meta': {'id': mf.IMAGE_ID, 'disk_format': 'qcow2',
                           'location': location}}
    with pytest.raises(exception.InvalidRequest) as err:
        # Found at validation or during the spawn: either way InvalidRequest.
        h.manager.dispatch('spawn', h.manager.validate('spawn', args, '1.0'),
                           mf.context())
    assert err.value.field == 'image_meta.location'
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    assert h.call('list_instances') == []
    assert h.domain(uuid) is None
    assert not os.path.exists(h.instance_dir(instance))
    reports = h.notifier.for_uuid(uuid)
    assert reports == [] or reports[-1]['event'] == 'spawn.error'
    if reports:
        assert reports[-1]['error']['class'] == 'InvalidRequest'


# --- 6. name clash -------------------------------------------------------------

def test_name_clash_with_a_live_instance(h):
    first, record = h.spawn()
    seen_first = len(h.notifier.for_uuid(first['uuid']))
    second = mf.make_instance(name=first['name'])
    ctx = mf.context()
    with pytest.raises(exception.InstanceInvalidState) as err:
        h.spawn(second, ctx=ctx)
    assert first['uuid'] in err.value.message
    assert repr(first['name']) in err.value.message
    # The first instance is untouched.
    assert h.info(first['uuid']) == record
    assert len(h.notifier.for_uuid(first['uuid'])) == seen_first
    expect_libvirt(h, first['uuid'], states.RUNNING)
    assert os.path.isfile(os.path.join(h.instance_dir(first), 'disk'))
    # The second was never created ...
    with pytest.raises(exception.InstanceNotFound):
        h.info(second['uuid'])
    assert h.domain(second['uuid']) is None
    # ... and, like any invalid request naming a uuid (docs: protocol-invalid-requests), is
    # reported: a cast spawn has no other way to tell the scheduler.
    reports = h.notifier.for_uuid(second['uuid'])
    assert [r['event'] for r in reports] == ['spawn.error']
    check_report(reports[0], second['uuid'], ctx)
    assert reports[0]['vm_state'] == states.ERROR
    assert reports[0]['error'] == {'class': 'InstanceInvalidState',
                                   'message': err.value.message}


def test_name_of_a_destroyed_instance_is_free_again(h):
    first, _ = h.spawn()
    h.call('destroy', instance=first)
    second = mf.make_instance(name=first['name'])
    _inst, record = h.spawn(second)
    assert record['vm_state'] == states.ACTIVE


def test_name_clash_with_a_foreign_libvirt_domain(h):
    """test:///default has its own domain 'test': the spawn fails in
    libvirt, the instance is left in error and that domain is untouched."""
    try:
        foreign = h.conn.lookupByName('test')
    except libvirt.libvirtError:
        pytest.skip("test:///default has no 'test' domain in this process")
    foreign_uuid, foreign_state = foreign.UUIDString(), foreign.state()
    instance = mf.make_instance(name='test')
    with pytest.raises(libvirt.libvirtError):
        h.spawn(instance)
    record = h.info(instance['uuid'])
    assert triple(record) == (states.ERROR, None, states.NOSTATE)
    assert 'test' in record['error']['message']
    assert h.domain(instance['uuid']) is None
    assert not os.path.exists(h.instance_dir(instance))
    foreign = h.conn.lookupByName('test')
    assert (foreign.UUIDString(), foreign.state()) == (foreign_uuid,
                                                      foreign_state)
    h.call('destroy', instance=instance)
    assert h.conn.lookupByName('test').UUIDString() == foreign_uuid


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


# --- 9. keys, read-only requests -------------------------------------------------

def test_key_is_the_uuid_for_state_changing_methods_only(h):
    instance = mf.make_instance(uuid=mf.new_uuid().upper())
    uuid = instance['uuid'].lower()
    for method in STATE_CHANGING:
        args = {'instance': instance}
        if method == 'spawn':
            args['image_meta'] = {'id': mf.IMAGE_ID}
        valid = h.manager.validate(method, args, '1.0')
        assert h.manager.key(method, valid) == uuid, method
        assert h.manager.instance_uuid_of(method, valid) == uuid, method
    for method in READ_ONLY:
        args = {'instance_uuid': uuid} if method in UUID_METHODS else {}
        valid = h.manager.validate(method, args, '1.0')
        assert h.manager.key(method, valid) is None, method
    valid = h.manager.validate('update_security_rules', {
        'instance_uuid': uuid, 'vif_id': 'p', 'rules': None}, '1.1')
    assert h.manager.key('update_security_rules', valid) == uuid
    for method in ('live_migrate', '_migration_check', '_migration_prepare',
                   '_migration_take_over', '_migration_rollback',
                   # cold migration
                   'migrate', '_cold_migration_receive',
                   '_cold_migration_drop', '_cold_migration_restore'):
        args = {'instance_uuid': uuid}
        args.update({'dest_host': 'h2'} if method in ('live_migrate', 'migrate')
                    else {'migration': {}})
        valid = h.manager.validate(method, args, '1.1')
        assert h.manager.key(method, valid) == uuid, method
    # Settling a crash asks beside the instance's lane (the asked may wait on the asker).
    valid = h.manager.validate('_migration_status', {'instance_uuid': uuid,
                                                     'migration': {}}, '1.1')
    assert h.manager.key('_migration_status', valid) is None
    # An abort must not wait behind the migration it cancels.
    valid = h.manager.validate('live_migrate_abort', {'instance_uuid': uuid}, '1.1')
    assert h.manager.key('live_migrate_abort', valid) == uuid + '/live_migrate_abort'
    assert set(READ_ONLY) | set(STATE_CHANGING) | {
        'update_security_rules', 'attach_volume', 'detach_volume',
        'attach_interface', 'detach_interface', 'rebuild', 'snapshot',
        'resize', 'confirm_resize', 'revert_resize',
        'set_admin_password', 'live_migrate',
        'live_migrate_abort', '_migration_check', '_migration_prepare',
        '_migration_take_over', '_migration_rollback',
        # cold migration
        'migrate', '_cold_migration_receive', '_cold_migration_drop',
        '_cold_migration_restore', '_migration_status'} == set(validation.METHODS)
    assert not os.path.exists(h.conf.instances_path)


def test_ping(h):
    pong = h.call('ping')
    assert set(pong) == {'host', 'version', 'uptime_s'}
    assert pong['host'] == mf.HOST
    assert pong['version'] == version.RPC_API_VERSION
    assert isinstance(pong['uptime_s'], (int, float)) and pong['uptime_s'] >= 0


def test_host_stats_and_host_state_update(h):
    instance, _ = h.spawn()
    stats = h.call('get_host_stats')
    assert set(stats) >= mf.HOST_STATE_KEYS
    assert stats['host'] == mf.HOST
    mf.parse_timestamp(stats['timestamp'])
    assert stats['hypervisor_type'] == 'TEST'
    for key in mf.HOST_STATE_KEYS - {'host', 'hypervisor_type', 'timestamp'}:
        assert isinstance(stats[key], int) and stats[key] >= 0, key
    assert stats['running_vms'] >= 1 and stats['vcpus_used'] >= 1
    h.call('power_off', instance=instance)
    assert h.call('get_host_stats')['running_vms'] == stats['running_vms'] - 1

    h.manager.host_state()
    (update,) = h.notifier.host_updates
    assert set(update) == mf.HOST_STATE_KEYS
    assert update['host'] == mf.HOST
    mf.parse_timestamp(update['timestamp'])


def test_list_instances_lists_live_records_only(h):
    a, _ = h.spawn()
    b, _ = h.spawn()
    c, _ = h.spawn()
    h.call('power_off', instance=b)
    h.call('destroy', instance=c)
    listed = h.call('list_instances')
    assert sorted(r['uuid'] for r in listed) == sorted([a['uuid'], b['uuid']])
    for record in listed:
        assert set(record) == mf.RECORD_KEYS
        assert record == h.info(record['uuid'])


def test_nothing_is_kept_in_memory_for_a_destroyed_instance(h):
    """No per-instance lock or power-check time outlives its instance (a
    host that spawns and destroys for months must not grow)."""
    a, _ = h.spawn()
    b, _ = h.spawn()
    h.manager.sync_power_states()
    h.call('destroy', instance=b)
    assert len(h.manager._locks) == 0           # none held once idle
    assert b['uuid'] not in h.manager._checked
    assert a['uuid'] in h.manager._checked
    assert h.info(a['uuid'])['power_checked_at']


def test_console_output(h):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    # test:/// runs no QEMU, so nothing writes the log: it is empty.
    log = os.path.join(h.instance_dir(instance), 'console.log')
    assert not os.path.exists(log)
    assert h.call('get_console_output', instance_uuid=uuid) == ''
    with open(log, 'w') as f:
        f.write(''.join('line %d\r\n' % i for i in range(1, 11)))
    assert h.call('get_console_output', instance_uuid=uuid,
                  tail_lines=3) == 'line 8\nline 9\nline 10\n'
    assert h.call('get_console_output', instance_uuid=uuid).count('\n') == 10


def test_vnc_console_without_a_port(h):
    """test:/// guests have no VNC port: a clear error, not a bogus port."""
    instance, record = h.spawn()
    assert record['vnc'] is None
    with pytest.raises(exception.InstanceInvalidState):
        h.call('get_vnc_console', instance_uuid=instance['uuid'])
    h.conf.set_override('enabled', False, 'vnc')
    with pytest.raises(exception.InstanceInvalidState) as err:
        h.call('get_vnc_console', instance_uuid=instance['uuid'])
    assert 'VNC is disabled' in err.value.message


# --- rescue details --------------------------------------------------------------

def test_power_cycle_of_a_rescued_guest_keeps_it_rescued(h):
    """The driver boots a rescued guest as rescued (power_on, hard reboot):
    the record must say so, or unrescue is refused and the guest is stuck
    in its rescue image while reported active."""
    instance = bring_to(h, states.RESCUED)
    uuid = instance['uuid']
    h.call('power_off', instance=instance)
    record = h.call('power_on', instance=instance)
    assert h.driver.is_rescued(instance)
    assert triple(record) == (states.RESCUED, None, states.RUNNING)
    h.call('power_off', instance=instance)
    record = h.call('reboot', instance=instance, reboot_type='HARD')
    assert triple(record) == (states.RESCUED, None, states.RUNNING)
    record = h.call('unrescue', instance=instance)
    assert triple(record) == (states.ACTIVE, None, states.RUNNING)
    assert not h.driver.is_rescued(instance)
    assert not [f for f in os.listdir(h.instance_dir(instance))
                if f.endswith('.rescue')]
    expect_libvirt(h, uuid, states.RUNNING)


def test_rescue_uses_the_rescue_image_and_unrescue_restores(h):
    instance = bring_to(h, states.ACTIVE)
    uuid = instance['uuid']
    original = h.domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    h.call('rescue', instance=instance,
           rescue_image_meta={'id': mf.RESCUE_IMAGE_ID, 'disk_format': 'qcow2'})
    assert 'disk.rescue' in h.domain(uuid).XMLDesc(0)
    h.call('unrescue', instance=instance)
    assert h.domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == original


# --- 10. secrets -------------------------------------------------------------------

def test_passwords_never_stored_nor_reported_nor_logged(h, caplog):
    caplog.set_level(logging.DEBUG)
    admin = 'AdminPw-' + mf.new_uuid()
    rescue = 'RescuePw-' + mf.new_uuid()
    instance = mf.make_instance(config_drive=True)
    _inst, record = h.spawn(instance, admin_password=admin)
    h.call('rescue', instance=instance, rescue_password=rescue)
    h.call('unrescue', instance=instance)
    h.call('power_off', instance=instance)
    # A failing spawn (another uuid) with a password, too.
    with pytest.raises(exception.ImageNotFound):
        h.spawn(mf.make_instance(image_ref='img-missing'), admin_password=admin)
    for secret in (admin, rescue):
        assert secret.encode() not in h.journal_bytes()
        assert secret not in repr(h.notifier.calls)
        assert secret not in repr(h.call('list_instances'))
        assert secret not in caplog.text
    assert admin not in repr(record)


# -- update_security_rules (docs: protocol-methods-1-1) ------------------------------------------

def _rule_states(h, uuid, since):
    return [(r['vm_state'], r['task_state'], r['event'])
            for r in h.notifier.for_uuid(uuid)[since:]]


def test_update_security_rules_keeps_rules_and_returns_to_the_state(h):
    inst, _ = h.spawn()
    uuid = inst['uuid']
    record = h.journal.get_instance(uuid)
    # A VIF of a type with no host filter mechanism: only the record changes.
    vif = {'id': 'port-1', 'address': 'fa:16:3e:00:00:01', 'type': 'plugin'}
    spec = dict(record['spec'], network_info=[vif])
    h.force_record(uuid, spec=spec)
    since = len(h.notifier.for_uuid(uuid))
    rules = [{'direction': 'ingress', 'ethertype': 'IPv4', 'protocol': 'icmp',
              'port_range_min': None, 'port_range_max': None,
              'remote_ip_prefix': '10.0.0.0/24'}]
    out = h.call('update_security_rules', instance_uuid=uuid, vif_id='port-1',
                 rules=rules)
    assert out['filters'] == {'port-1': {'anti_spoofing': True, 'rules': rules}}
    assert h.info(uuid)['filters'] == out['filters']
    assert _rule_states(h, uuid, since) == [
        ('active', 'updating_security_rules', 'update_security_rules.start'),
        ('active', None, 'update_security_rules.end')]


def test_update_security_rules_unknown_vif_changes_nothing(h):
    inst, _ = h.spawn()
    uuid = inst['uuid']
    since = len(h.notifier.for_uuid(uuid))
    with pytest.raises(exception.InvalidRequest) as err:
        h.call('update_security_rules', instance_uuid=uuid, vif_id='nope', rules=[])
    assert 'vif_id' in err.value.message
    assert h.info(uuid)['vm_state'] == 'active'
    assert h.info(uuid)['task_state'] is None
    assert h.info(uuid)['filters'] == {}
    assert _rule_states(h, uuid, since)[-1][:2] == ('active', None)


def test_update_security_rules_unknown_instance(h):
    with pytest.raises(exception.InstanceNotFound):
        h.call('update_security_rules', instance_uuid=mf.new_uuid(), vif_id='p',
               rules=None)


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
