"""The instance manager: spawns that are invalid, fail in the driver, or
clash by name leave nothing behind (see test_manager.py for the setting)."""

import os
import threading
import time

import libvirt
import pytest

from compute_agent import exception
from compute_agent import states

try:
    from tests.unit import manager_fixtures as mf
    from tests.unit.manager_checks import h  # noqa: F401
    from tests.unit.manager_checks import (
        check_report, expect_libvirt, triple)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf
    from manager_checks import h  # noqa: F401
    from manager_checks import (
        check_report, expect_libvirt, triple)


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
