"""resize / confirm_resize / revert_resize through the real Manager and
LibvirtDriver on ``test:///default`` (docs: protocol-method-resize).

The disks are real files made by qemu-img; libvirt's test driver stands in
for QEMU (the guest side is tests/functional/test_e2e_resize.py). The
expectations are written out here, never read from ``states``.
"""

import os

import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent.virt import disks

try:
    from tests.unit import manager_fixtures as mf
    from tests.unit.manager_fixtures import h  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf
    from manager_fixtures import h  # noqa: F401

GiB = 1 << 30
OLD = {'memory_mb': 64, 'vcpus': 1, 'root_gb': 1, 'ephemeral_gb': 1, 'swap': 0}
NEW = {'memory_mb': 128, 'vcpus': 2, 'root_gb': 2, 'ephemeral_gb': 2, 'swap': 16}
SAVED = '.pre-resize'


def spawned(h):
    instance = mf.make_instance(flavor=dict(OLD))
    h.spawn(instance)
    return instance


def files(h, instance):
    """{name: (inode, virtual size)} of the disk files."""
    out = {}
    path = h.instance_dir(instance)
    for name in sorted(os.listdir(path)):
        if name.startswith('disk') and not name.startswith('disk.config'):
            full = os.path.join(path, name)
            out[name] = (os.stat(full).st_ino,
                         disks.qemu_img_info(full)['virtual-size'])
    return out


def sizes(h, instance):
    return {name: size for name, (_ino, size) in files(h, instance).items()}


def domain_size(h, uuid):
    dom = h.domain(uuid)
    return dom.maxMemory(), dom.info()[3]


def bases(h):
    """{file: (inode, mtime)} of the cached bases: never written."""
    base = os.path.join(h.conf.instances_path, '_base')
    return {n: (os.stat(os.path.join(base, n)).st_ino,
                os.stat(os.path.join(base, n)).st_mtime_ns)
            for n in sorted(os.listdir(base))}


def triples(h, uuid, since=0):
    return [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in h.notifier.for_uuid(uuid)[since:]]


def test_resize_revert_and_confirm(h):
    instance = spawned(h)
    uuid = instance['uuid']
    before = files(h, instance)
    assert {n: s for n, (_i, s) in before.items()} == {
        'disk': 1 * GiB, 'disk.local': 1 * GiB}
    cached = bases(h)

    since = len(h.notifier.for_uuid(uuid))
    rec = h.call('resize', instance_uuid=uuid, flavor=NEW)
    assert (rec['vm_state'], rec['task_state'], rec['power_state']) == (
        'resized', None, 1)
    assert rec['flavor'] == NEW
    assert rec['devices'] == {'root': 'vda', 'ephemeral': 'vdb', 'swap': 'vdc'}
    assert triples(h, uuid, since) == [
        ('resize.start', 'active', 'resize_migrating', 1),
        ('resize.start', 'active', 'resize_finish', 4),     # the guest is down
        ('resize.end', 'resized', None, 1)]
    assert sizes(h, instance) == {
        'disk': 2 * GiB, 'disk.local': 2 * GiB, 'disk.swap': 16 << 20,
        'disk' + SAVED: 1 * GiB, 'disk.local' + SAVED: 1 * GiB}
    now = files(h, instance)
    for name in ('disk', 'disk.local'):     # the saved file is the old inode
        assert now[name + SAVED][0] == before[name][0]
        assert now[name][0] != before[name][0]
    assert domain_size(h, uuid) == (128 * 1024, 2)
    assert bases(h).items() >= cached.items()       # no cached base written
    assert h.journal.get_instance(uuid)['resize']['old_flavor'] == OLD

    rec = h.call('revert_resize', instance_uuid=uuid)
    assert (rec['vm_state'], rec['task_state'], rec['power_state'],
            rec['flavor']) == ('active', None, 1, OLD)
    assert rec['devices'] == {'root': 'vda', 'ephemeral': 'vdb'}
    assert files(h, instance) == before             # the very files, as they were
    assert domain_size(h, uuid) == (64 * 1024, 1)
    assert h.journal.get_instance(uuid)['resize'] is None

    h.call('resize', instance_uuid=uuid, flavor=NEW)
    rec = h.call('confirm_resize', instance_uuid=uuid)
    assert (rec['vm_state'], rec['task_state'], rec['power_state'],
            rec['flavor']) == ('active', None, 1, NEW)
    assert sizes(h, instance) == {'disk': 2 * GiB, 'disk.local': 2 * GiB,
                                  'disk.swap': 16 << 20}
    assert domain_size(h, uuid) == (128 * 1024, 2)
    assert bases(h).items() >= cached.items()
    # A hard reboot plans the guest from the record: the new flavor.
    h.call('reboot', instance={'uuid': uuid}, reboot_type='HARD')
    assert domain_size(h, uuid) == (128 * 1024, 2)


def test_confirm_drops_the_disks_only_the_old_flavor_used(h):
    instance = mf.make_instance(flavor=dict(OLD, swap=8))
    uuid = instance['uuid']
    h.spawn(instance)
    h.call('resize', instance_uuid=uuid, flavor=dict(OLD, swap=0, vcpus=2))
    assert sorted(sizes(h, instance)) == ['disk', 'disk.local', 'disk.swap']
    h.call('confirm_resize', instance_uuid=uuid)
    assert sorted(sizes(h, instance)) == ['disk', 'disk.local']


@pytest.mark.parametrize('field', ['root_gb', 'ephemeral_gb'])
def test_a_shrink_is_refused_and_touches_nothing(h, field):
    instance = spawned(h)
    uuid = instance['uuid']
    before = files(h, instance)
    since = len(h.notifier.for_uuid(uuid))
    with pytest.raises(exception.InvalidRequest) as ei:
        h.call('resize', instance_uuid=uuid, flavor=dict(NEW, **{field: 0}))
    assert ei.value.field == 'flavor.' + field
    assert triples(h, uuid, since) == [
        ('resize.start', 'active', 'resize_migrating', 1),
        ('resize.error', 'active', None, 1)]
    rec = h.info(uuid)
    assert (rec['vm_state'], rec['flavor'], rec['error']['class']) == (
        'active', OLD, 'InvalidRequest')
    assert files(h, instance) == before
    assert domain_size(h, uuid) == (64 * 1024, 1)
    assert 'resize' not in h.journal.get_instance(uuid)


@pytest.mark.parametrize('start', ['stopped', 'paused', 'rescued'])
def test_resize_only_from_active(h, start):
    instance = spawned(h)
    uuid = instance['uuid']
    method = {'stopped': 'power_off', 'paused': 'pause', 'rescued': 'rescue'}[start]
    h.call(method, instance={'uuid': uuid})
    with pytest.raises(exception.InstanceInvalidState):
        h.call('resize', instance_uuid=uuid, flavor=NEW)
    for method in ('confirm_resize', 'revert_resize'):
        with pytest.raises(exception.InstanceInvalidState):
            h.call(method, instance_uuid=uuid)


def test_a_failed_step_puts_the_old_guest_back(h, monkeypatch):
    instance = spawned(h)
    uuid = instance['uuid']
    before = files(h, instance)

    def fail(rplan):
        raise RuntimeError('no room for the new guest')
    monkeypatch.setattr(h.driver, 'finish_resize', fail)
    with pytest.raises(RuntimeError):
        h.call('resize', instance_uuid=uuid, flavor=NEW)
    rec = h.info(uuid)
    assert (rec['vm_state'], rec['power_state'], rec['flavor']) == ('error', 1, OLD)
    assert files(h, instance) == before
    assert domain_size(h, uuid) == (64 * 1024, 1)
    assert h.journal.get_instance(uuid)['resize'] is None


def test_destroy_of_a_resized_instance_removes_the_saved_disks(h):
    instance = spawned(h)
    uuid = instance['uuid']
    h.call('resize', instance_uuid=uuid, flavor=NEW)
    rec = h.call('destroy', instance={'uuid': uuid})
    assert rec['vm_state'] == 'deleted'
    assert not os.path.exists(h.instance_dir(instance))
    assert h.domain(uuid) is None
    assert h.journal.get_instance(uuid) is None


# (task state a killed agent left, how far the guest got, vm_state and flavor
#  after recovery, what the redelivery ends in)
INTERRUPTED = [
    ('resize_migrating', 'disks', 'active', OLD, ('resized', NEW)),
    ('resize_finish', 'disks', 'active', OLD, ('resized', NEW)),
    ('resize_finish', 'finished', 'active', OLD, ('resized', NEW)),
    ('resize_migrating', None, 'active', OLD, ('resized', NEW)),
    ('resize_reverting', 'resized', 'active', OLD, ('active', OLD)),
    ('resize_reverting', 'reverted', 'active', OLD, ('active', OLD)),
    ('resize_confirming', 'resized', 'active', NEW, ('active', NEW)),
]


@pytest.mark.parametrize('task,got,vm_state,flavor,end', INTERRUPTED)
def test_recovery_and_redelivery(h, task, got, vm_state, flavor, end):
    """docs: protocol-recovery: a resize is rolled back, a revert or confirm
    finished; the redelivery completes with the outcome."""
    instance = spawned(h)
    uuid = instance['uuid']
    before = files(h, instance)
    method = {'resize_migrating': 'resize', 'resize_finish': 'resize',
              'resize_reverting': 'revert_resize',
              'resize_confirming': 'confirm_resize'}[task]
    ctx = mf.context()
    record = h.journal.get_instance(uuid)
    rplan = h.manager.planner.resize(record['spec'], OLD, NEW)
    saved = {'old_flavor': OLD, 'new_flavor': NEW, 'host': mf.HOST,
             'files': rplan.files()}
    if method == 'resize':
        if got in ('disks', 'finished'):
            h.driver.resize_disks(rplan)
        if got == 'finished':
            h.driver.finish_resize(rplan)
        h.force_record(uuid, task_state=task, task_request_id=ctx['request_id'],
                       resize=saved if got else None)
    else:
        h.call('resize', instance_uuid=uuid, flavor=NEW)
        if got == 'reverted':
            h.driver.revert_resize(rplan)
        h.force_record(uuid, task_state=task, task_request_id=ctx['request_id'])

    manager = type(h.manager)(h.conf, h.driver, h.journal, h.notifier)
    manager.recover()
    rec = h.info(uuid)
    assert (rec['vm_state'], rec['task_state'], rec['power_state'],
            rec['flavor']) == (vm_state, None, 1, flavor)
    assert not [n for n in os.listdir(h.instance_dir(instance)) if SAVED in n]
    if flavor == OLD:
        assert files(h, instance) == before
    assert domain_size(h, uuid) == (flavor['memory_mb'] * 1024, flavor['vcpus'])

    h.manager = manager
    args = {'flavor': NEW} if method == 'resize' else {}
    rec = h.call(method, ctx=ctx, instance_uuid=uuid, **args)
    assert (rec['vm_state'], rec['task_state'], rec['error'],
            rec['flavor']) == (end[0], None, None, end[1])
    assert h.info(uuid) == rec
    if end[0] == states.ACTIVE:     # the same request again is judged afresh
        with pytest.raises(exception.InstanceInvalidState):
            h.call(method, ctx=ctx, instance_uuid=uuid, **args)
