"""What a scheduler meets when a request is refused or a part is missing,
on test:///default (docs: protocol-failure-unchanged, protocol-reports):

- every failed operation is reported, a refused one too (a cast has no
  reply: the ``<method>.error`` report is how its sender learns the end),
  and a report's ``error`` is its own failure;
- a volume attached without an id is named by its mount_device;
- a guest whose domain is gone is revived by a hard reboot.
"""

import pytest

from compute_agent import exception
from compute_agent import states

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf

h = mf.h


def _seen(h, uuid, since):
    return [(r['event'], r['vm_state'], r['task_state'], r['power_state'],
             (r['error'] or {}).get('class'))
            for r in h.notifier.for_uuid(uuid)[since:]]


ACTIVE = (states.ACTIVE, None, states.RUNNING)
STOPPED = (states.STOPPED, None, states.SHUTDOWN)

# (method, args, from stopped?, the failure, the start the table reports
# before a pre-check refuses): refused before the guest was touched.
REFUSALS = [
    ('rescue', {}, True, exception.InstanceInvalidState, None),
    ('migrate', {'dest_host': mf.HOST}, False,
     exception.MigrationPreCheckError, None),
    ('live_migrate', {'dest_host': mf.HOST}, False,
     exception.MigrationPreCheckError, 'migrating'),
    ('live_migrate_abort', {}, False, exception.InstanceInvalidState, None),
]


@pytest.mark.parametrize('method,args,stopped,error,start', REFUSALS,
                         ids=[c[0] for c in REFUSALS])
def test_a_refusal_is_reported_once_with_the_states_unchanged(
        h, method, args, stopped, error, start):
    inst, _ = h.spawn()
    uuid = inst['uuid']
    states_now = ACTIVE
    if stopped:
        h.call('power_off', instance=inst, timeout=0)
        states_now = STOPPED
    since = len(h.notifier.for_uuid(uuid))
    with pytest.raises(error):
        if method == 'rescue':
            h.call(method, instance=inst)
        else:
            h.call(method, instance_uuid=uuid, **args)
    expected = [(method + '.error',) + states_now + (error.__name__,)]
    if start:
        expected.insert(0, (method + '.start', states_now[0], start,
                            states_now[2], None))
    assert _seen(h, uuid, since) == expected
    record = h.info(uuid)
    assert (record['vm_state'], record['task_state'], record['power_state']) == states_now


def test_an_instance_never_seen_is_reported_error_one_destroyed_is_not(h):
    never = mf.new_uuid()
    with pytest.raises(exception.InstanceNotFound):
        h.call('power_on', instance=mf.make_instance(uuid=never))
    assert _seen(h, never, 0) == [('power_on.error', states.ERROR, None,
                                   states.NOSTATE, 'InstanceNotFound')]
    inst, _ = h.spawn()
    h.call('destroy', instance=inst)
    since = len(h.notifier.for_uuid(inst['uuid']))
    with pytest.raises(exception.InstanceNotFound):
        h.call('power_on', instance=inst)
    with pytest.raises(exception.InstanceNotFound):
        h.call('get_info', instance_uuid=never)
    assert _seen(h, inst['uuid'], since) == []      # 'deleted' stands
    assert len(h.notifier.for_uuid(never)) == 1     # a query is not reported


def test_an_operation_after_a_failure_does_not_start_failed(h):
    """The record keeps a failure until the next success; the next
    operation's ``.start`` report carries no error of its own."""
    inst, _ = h.spawn()
    uuid = inst['uuid']
    h.remove_image(mf.RESCUE_IMAGE_ID)
    with pytest.raises(exception.ImageNotFound):
        h.call('rescue', instance=inst,
               rescue_image_meta={'id': mf.RESCUE_IMAGE_ID})
    assert h.info(uuid)['error']['class'] == 'ImageNotFound'
    since = len(h.notifier.for_uuid(uuid))
    h.call('reboot', instance=inst, reboot_type='HARD')
    assert _seen(h, uuid, since) == [
        ('reboot.start', states.ACTIVE, 'rebooting_hard', states.RUNNING, None),
        ('reboot.end',) + ACTIVE + (None,)]
    assert h.info(uuid)['error'] is None


def test_a_volume_attached_without_an_id_is_detached_by_its_mount_device(h, tmp_path):
    """PROTOCOL 1.1 sec. 3: without a volume_id the mount_device names the
    volume; the record shows it bare, detach_volume takes either. The test
    driver cannot detach a device, so reaching its refusal is the proof the
    volume was found (a real detach: tests/functional/test_e2e_volumes.py)."""
    vol = tmp_path / 'vol.img'
    vol.write_bytes(b'\0' * 4096)
    bdi = {'block_device_mapping': [{'mount_device': '/dev/vdc', 'connection_info': {
        'driver_volume_type': 'local', 'data': {'device_path': str(vol)}}}]}
    inst, record = h.spawn(block_device_info=bdi)
    assert [v['volume_id'] for v in record['volumes']] == ['vdc']
    for name in ('/dev/vdc', 'vdc'):
        with pytest.raises(exception.VolumeDetachFailed, match='not supported'):
            h.call('detach_volume', instance_uuid=inst['uuid'], volume_id=name)
    with pytest.raises(exception.VolumeNotFound):
        h.call('detach_volume', instance_uuid=inst['uuid'], volume_id='/dev/vdd')


def test_a_hard_reboot_revives_a_guest_whose_domain_is_gone(h):
    """A record whose domain vanished (undefined behind the agent's back, or
    a spawn that failed before defining it) is the instance, not
    InstanceNotFound: a hard reboot defines it anew from the stored
    request and starts it."""
    inst, _ = h.spawn()
    uuid = inst['uuid']
    dom = h.domain(uuid)
    dom.destroy()
    dom.undefine()
    record = h.call('reboot', instance=inst, reboot_type='HARD')
    assert (record['vm_state'], record['task_state'], record['power_state'],
            record['error']) == (states.ACTIVE, None, states.RUNNING, None)
    assert h.domain(uuid).isActive()
