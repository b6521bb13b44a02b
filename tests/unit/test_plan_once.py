"""A request is planned once, at the boundary; the driver executes the plan.

Real Manager, LibvirtDriver on ``test:///default`` and Journal (the
manager_fixtures harness). While any driver method runs, the builder is
patched to fail the test: the driver never plans. Every plan the driver is
handed must come back with its domain model unchanged.
"""

import threading

import libvirt
import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent.virt import builder
from compute_agent.virt import config
from compute_agent.virt.plan import GuestPlan

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf

DRIVER_METHODS = ('spawn', 'prepare_rescue', 'rescue', 'unrescue', 'reboot',
                  'power_off', 'power_on', 'pause', 'unpause', 'suspend',
                  'resume', 'destroy')


@pytest.fixture
def h(tmp_path, monkeypatch):
    harness = mf.Harness(tmp_path)
    inside = threading.local()
    harness.builds = []
    real_build = builder.build

    def build(*args, **kwargs):
        if getattr(inside, 'method', None):
            raise AssertionError('the driver called the builder in %s'
                                 % inside.method)
        plan = real_build(*args, **kwargs)
        harness.builds.append(plan)
        return plan
    monkeypatch.setattr(builder, 'build', build)

    def guarded(name, method):
        def run(*args, **kwargs):
            plans = [a for a in args if isinstance(a, GuestPlan)]
            before = [p.domain.to_xml() for p in plans]
            outer, inside.method = getattr(inside, 'method', None), name
            try:
                return method(*args, **kwargs)
            finally:
                inside.method = outer
                assert [p.domain.to_xml() for p in plans] == before, (
                    'the driver edited the plan in %s' % name)
        return run
    for name in DRIVER_METHODS:
        monkeypatch.setattr(harness.driver, name,
                            guarded(name, getattr(harness.driver, name)))
    yield harness
    harness.close()


def defined_xml(h, uuid):
    return h.domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)


def test_spawn_is_planned_once_at_validation_and_executed_as_planned(h):
    instance = mf.make_instance(config_drive=True)
    args = h.manager.validate('spawn', {
        'instance': instance,
        'image_meta': {'id': mf.IMAGE_ID, 'disk_format': 'qcow2'}}, '1.0')
    (plan,) = h.builds
    assert args['plan'] is plan          # the plan travels with the job
    record = h.manager.dispatch('spawn', args, mf.context())
    assert len(h.builds) == 1            # ... and is not made again
    assert record['devices'] == plan.devices
    live = config.Domain.parse(defined_xml(h, instance['uuid']))
    assert ([d.source_file for d in live.disks]
            == [d.source_file for d in plan.domain.disks])


def test_rescue_reboot_and_power_cycle_never_plan_in_the_driver(h):
    instance = mf.make_instance(config_drive=True)
    uuid = instance['uuid']
    h.spawn(instance)
    h.builds.clear()

    h.call('rescue', instance=instance,
           rescue_image_meta={'id': mf.RESCUE_IMAGE_ID, 'disk_format': 'qcow2'},
           rescue_password='rescue-pw')
    (rescue_plan,) = h.builds
    assert rescue_plan.rescue
    # What reaches libvirt is the builder's rescue XML, final names included.
    files = [d.source_file for d in config.Domain.parse(defined_xml(h, uuid)).disks]
    assert files == [d.source_file for d in rescue_plan.domain.disks]
    assert [f.rsplit('/', 1)[1] for f in files] == [
        'disk.rescue', 'disk', 'disk.config.rescue']

    # A rescued guest powered off and hard rebooted comes back rescued, from
    # the stored rescue request.
    h.call('power_off', instance=instance, timeout=0)
    record = h.call('reboot', instance=instance, reboot_type='HARD')
    assert record['vm_state'] == states.RESCUED
    assert [f.rsplit('/', 1)[1] for f in
            [d.source_file for d in config.Domain.parse(defined_xml(h, uuid)).disks]
            ] == ['disk.rescue', 'disk', 'disk.config.rescue']
    h.call('unrescue', instance=instance)
    h.builds.clear()

    # Hard reboot: the guest from the stored spawn request.
    h.call('reboot', instance=instance, reboot_type='HARD')
    (reboot_plan,) = h.builds
    assert not reboot_plan.rescue
    assert ([d.source_file for d in config.Domain.parse(defined_xml(h, uuid)).disks]
            == [d.source_file for d in reboot_plan.domain.disks])
    for method in ('pause', 'unpause', 'suspend', 'resume', 'power_off',
                   'power_on', 'destroy'):
        h.call(method, instance=instance)


@pytest.mark.parametrize('meta,field', [
    ({'id': mf.RESCUE_IMAGE_ID, 'location': 'file:///etc/passwd'},
     'rescue_image_meta.location'),
    ({'id': mf.RESCUE_IMAGE_ID, 'location': 'gopher://images.example.com/x'},
     'rescue_image_meta.location'),
], ids=['outside-the-store', 'disallowed-scheme'])
def test_refused_rescue_location_is_invalid_and_changes_nothing(h, meta, field):
    """Checked at validation, like a spawn's: nothing is touched, and the
    error report carries the unchanged states (docs: protocol-delivery)."""
    instance, record = h.spawn()
    uuid = instance['uuid']
    xml = defined_xml(h, uuid)
    with pytest.raises(exception.InvalidRequest) as err:
        h.call('rescue', instance=instance, rescue_image_meta=meta)
    assert err.value.field == field
    h.manager.report_invalid('rescue', uuid, err.value, mf.context())
    report = h.notifier.for_uuid(uuid)[-1]
    assert report['event'] == 'rescue.error'
    assert (report['vm_state'], report['power_state']) == (states.ACTIVE,
                                                           states.RUNNING)
    assert report['error']['class'] == 'InvalidRequest'
    assert field in report['error']['message']
    assert h.info(uuid) == record
    assert defined_xml(h, uuid) == xml
    assert not h.driver.is_rescued(instance)


def test_rescue_failing_before_the_guest_is_touched_leaves_it_as_it_was(h):
    """A missing rescue image is found while preparing: the guest keeps
    running, the record stays active, the report says why."""
    instance, record = h.spawn()
    uuid = instance['uuid']
    xml = defined_xml(h, uuid)
    ctx = mf.context()
    with pytest.raises(exception.ImageNotFound):
        h.call('rescue', ctx=ctx, instance=instance,
               rescue_image_meta={'id': 'no-such-rescue-image'})
    start, error = h.notifier.for_uuid(uuid)[-2:]
    assert (start['event'], start['task_state']) == ('rescue.start', 'rescuing')
    assert error['event'] == 'rescue.error'
    assert (error['vm_state'], error['task_state'], error['power_state']) == (
        states.ACTIVE, None, states.RUNNING)
    assert error['error']['class'] == 'ImageNotFound'
    assert error['request_id'] == ctx['request_id']
    after = h.info(uuid)
    assert (after['vm_state'], after['task_state'], after['power_state']) == (
        states.ACTIVE, None, states.RUNNING)
    assert after['error']['class'] == 'ImageNotFound'
    assert h.libvirt_state(uuid) == (libvirt.VIR_DOMAIN_RUNNING, False)
    assert defined_xml(h, uuid) == xml
    assert not h.driver.is_rescued(instance)
    # It takes requests as before; a good rescue clears the error.
    record = h.call('rescue', instance=instance)
    assert record['vm_state'] == states.RESCUED and record['error'] is None
