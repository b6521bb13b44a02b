"""The instance manager: state machine, reports, errors, events, recovery.

Everything is real: the Manager, the LibvirtDriver on libvirt's in-process
``test:///default`` driver, the SQLite Journal, a file:// image store with
qcow2 images made by qemu-img. Only the notifier is a capturing stand-in.
Expectations come from the docs (protocol-methods, protocol-reports, protocol-states,
5 errors), written out as cases: the tests never read ``states``' table.
"""

import logging
import os

import libvirt
import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent import validation
from compute_agent import version

try:
    from tests.unit import manager_fixtures as mf
    from tests.unit.manager_checks import h  # noqa: F401
    from tests.unit.manager_checks import (
        HARD, S, SOFT, bring_to, check_report, expect_libvirt, new_reports,
        triple)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf
    from manager_checks import h  # noqa: F401
    from manager_checks import (
        HARD, S, SOFT, bring_to, check_report, expect_libvirt, new_reports,
        triple)


# Every allowed transition, written out (the protocol docs sections 4-5), not read
# from states.TRANSITIONS: (method, start vm_state, extra args, task_state
# while it runs, end vm_state, end power_state). None: never spawned.
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
        # Reported (a cast has no other answer), with the states unchanged.
        seq += 1
        reports = h.notifier.reports[seen:]
        seen += 1
        assert [(r['event'], r['vm_state'], r['task_state'], r['power_state'],
                 r['error']['class'], r['sequence']) for r in reports] == [
            (method + '.error', record['vm_state'], record['task_state'],
             record['power_state'], 'InstanceInvalidState', seq)], method
        assert h.journal.instance_sequence(uuid) == seq, method


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
    # An operation is reported (vm_state error: there is no instance to
    # keep the states of); a query is not.
    assert [(r['event'], r['vm_state'], r['task_state'], r['power_state'],
             r['error']['class']) for r in h.notifier.reports] == (
        [] if method in UUID_METHODS else
        [(method + '.error', 'error', None, 0, 'InstanceNotFound')])
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
    with pytest.raises(exception.InterfaceNotFound) as err:   # PROTOCOL 1.1 sec. 5
        h.call('update_security_rules', instance_uuid=uuid, vif_id='nope', rules=[])
    assert 'nope' in err.value.message
    assert h.info(uuid)['vm_state'] == 'active'
    assert h.info(uuid)['task_state'] is None
    assert h.info(uuid)['filters'] == {}
    assert _rule_states(h, uuid, since)[-1][:2] == ('active', None)


def test_update_security_rules_unknown_instance(h):
    with pytest.raises(exception.InstanceNotFound):
        h.call('update_security_rules', instance_uuid=mf.new_uuid(), vif_id='p',
               rules=None)
