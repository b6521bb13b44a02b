"""rebuild (docs: protocol-method-rebuild) through the real Manager.

The LibvirtDriver runs on libvirt's in-process ``test:///default`` driver
(no guest boots: that is tests/functional/test_e2e_rebuild.py), the journal
is SQLite and the images are real qcow2 files made by qemu-img, so the
files a rebuild makes and swaps are real. Expectations are written out from
the docs, never read from ``states``.
"""

import logging
import os
import subprocess

import libvirt
import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent.images import cleanup
from compute_agent.virt import configdrive

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf

NEW_IMAGE = 'img-new'


@pytest.fixture
def h(tmp_path):
    harness = mf.Harness(tmp_path)
    mf.make_image(os.path.join(harness.store, NEW_IMAGE), '32M')
    yield harness
    harness.close()


def states_of(r):
    return (r['vm_state'], r['task_state'], r['power_state'])


def rebuild(h, uuid, ctx=None, image=NEW_IMAGE, **args):
    return h.call('rebuild', ctx, instance_uuid=uuid,
                  image_meta=dict({'id': image, 'disk_format': 'qcow2'},
                                  **args.pop('meta', {})), **args)


def events(h, uuid, since):
    return [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in h.notifier.for_uuid(uuid)[since:]]


def backing_image(h, instance):
    disk = os.path.join(h.instance_dir(instance), 'disk')
    return os.path.realpath(cleanup.backing_file(disk))


def cached(h, image_id):
    return os.path.realpath(h.driver.image_cache.path_for(image_id))


def leftovers(h, instance):
    return [n for n in os.listdir(h.instance_dir(instance)) if n.endswith('.rebuild')]


def test_rebuild_of_a_running_guest_onto_another_image(h):
    instance = mf.make_instance(config_drive=True)
    h.spawn(instance)
    uuid = instance['uuid']
    before = h.info(uuid)
    xml_uuid = h.domain(uuid).UUIDString()
    since = len(h.notifier.for_uuid(uuid))
    record = rebuild(h, uuid)
    assert events(h, uuid, since) == [
        ('rebuild.start', 'active', 'rebuilding', 1),
        ('rebuild.end', 'active', None, 1)]
    assert states_of(record) == ('active', None, states.RUNNING)
    assert record['image_ref'] == NEW_IMAGE and before['image_ref'] == mf.IMAGE_ID
    assert (record['uuid'], record['name'], record['devices']) == (
        before['uuid'], before['name'], before['devices'])
    assert h.info(uuid) == record
    # The root disk is an overlay of the new image; nothing staged is left.
    assert backing_image(h, instance) == cached(h, NEW_IMAGE)
    assert leftovers(h, instance) == []
    assert h.domain(uuid).UUIDString() == xml_uuid
    # The stored request follows: a hard reboot keeps the new image.
    spec = h.journal.get_instance(uuid)['spec']
    assert spec['instance']['image_ref'] == NEW_IMAGE
    assert spec['image_meta']['id'] == NEW_IMAGE
    assert 'rebuild' not in h.journal.get_instance(uuid) or \
        h.journal.get_instance(uuid)['rebuild'] is None
    h.call('reboot', instance={'uuid': uuid}, reboot_type='HARD')
    assert backing_image(h, instance) == cached(h, NEW_IMAGE)


def test_a_stopped_guest_stays_stopped(h):
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']
    h.call('power_off', instance={'uuid': uuid})
    since = len(h.notifier.for_uuid(uuid))
    record = rebuild(h, uuid)
    assert states_of(record) == ('stopped', None, states.SHUTDOWN)
    assert events(h, uuid, since) == [
        ('rebuild.start', 'stopped', 'rebuilding', 4),
        ('rebuild.end', 'stopped', None, 4)]
    assert h.domain(uuid).state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
    assert backing_image(h, instance) == cached(h, NEW_IMAGE)


def test_a_guest_in_error_is_rebuilt_and_started(h):
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']
    h.domain(uuid).destroy()
    h.force_record(uuid, vm_state=states.ERROR, power_state=states.SHUTDOWN,
                   error={'class': 'AgentError', 'message': 'forged'})
    record = rebuild(h, uuid)
    assert states_of(record) == ('active', None, states.RUNNING)
    assert record['error'] is None


@pytest.mark.parametrize('start', ['paused', 'suspended', 'rescued'])
def test_rebuild_is_refused_where_it_makes_no_sense(h, start):
    instance = mf.make_instance()
    h.spawn(instance)
    h.call({'paused': 'pause', 'suspended': 'suspend',
            'rescued': 'rescue'}[start], instance={'uuid': instance['uuid']})
    with pytest.raises(exception.InstanceInvalidState):
        rebuild(h, instance['uuid'])
    assert h.info(instance['uuid'])['vm_state'] == start


@pytest.mark.parametrize('power_off', [False, True])
def test_an_image_that_cannot_be_had_leaves_the_guest_untouched(h, power_off):
    instance = mf.make_instance(config_drive=True)
    h.spawn(instance)
    uuid = instance['uuid']
    if power_off:
        h.call('power_off', instance={'uuid': uuid})
    before = h.info(uuid)
    disk = os.path.join(h.instance_dir(instance), 'disk')
    inode = os.stat(disk).st_ino
    for image, meta, error in (
            ('img-missing', {}, exception.ImageNotFound),
            (NEW_IMAGE, {'checksum': 'sha256:' + '0' * 64},
             exception.ImageChecksumMismatch)):
        since = len(h.notifier.for_uuid(uuid))
        with pytest.raises(error):
            rebuild(h, uuid, image=image, meta=meta)
        after = h.info(uuid)
        assert (after['vm_state'], after['power_state'], after['task_state']) == (
            before['vm_state'], before['power_state'], None)
        assert after['image_ref'] == mf.IMAGE_ID
        assert after['error']['class'] == error.__name__
        last = h.notifier.for_uuid(uuid)[since:][-1]
        assert (last['event'], last['vm_state'], last['power_state']) == (
            'rebuild.error', before['vm_state'], before['power_state'])
        assert os.stat(disk).st_ino == inode
        assert leftovers(h, instance) == []
        assert h.journal.get_instance(uuid)['spec']['instance']['image_ref'] == mf.IMAGE_ID


def test_a_location_outside_the_store_is_refused_before_anything(h):
    instance = mf.make_instance()
    h.spawn(instance)
    since = len(h.notifier.for_uuid(instance['uuid']))
    with pytest.raises(exception.InvalidRequest) as info:
        rebuild(h, instance['uuid'], meta={'location': 'file:///etc/passwd'})
    assert info.value.field == 'image_meta.location'
    assert h.notifier.for_uuid(instance['uuid'])[since:] == []


def test_config_drive_takes_the_new_password_or_keeps_the_old(h):
    old, new = 'OldPw-' + mf.new_uuid(), 'NewPw-' + mf.new_uuid()
    instance = mf.make_instance(config_drive=True)
    h.spawn(instance, admin_password=old,
            injected_files=[['/etc/motd', 'aGVsbG8K']])
    drive = os.path.join(h.instance_dir(instance), 'disk.config')
    assert configdrive.read_kept(drive) == (old, [['/etc/motd', 'aGVsbG8K']])
    rebuild(h, instance['uuid'])
    assert configdrive.read_kept(drive) == (old, [['/etc/motd', 'aGVsbG8K']])
    rebuild(h, instance['uuid'], admin_password=new)
    assert configdrive.read_kept(drive) == (new, [['/etc/motd', 'aGVsbG8K']])
    assert os.stat(drive).st_mode & 0o777 == configdrive.FILE_MODE


def test_preserve_ephemeral_keeps_the_disk_otherwise_it_is_new(h):
    instance = mf.make_instance(flavor={'memory_mb': 64, 'vcpus': 1, 'root_gb': 1,
                                        'ephemeral_gb': 1})
    h.spawn(instance)
    local = os.path.join(h.instance_dir(instance), 'disk.local')
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -P 0x5a 0 4096', local],
                   check=True, capture_output=True)

    def marked():
        out = subprocess.run(['qemu-io', '-f', 'qcow2', '-r', '-c',
                              'read -P 0x5a 0 4096', local],
                             capture_output=True, text=True).stdout
        return 'Pattern verification failed' not in out
    assert marked()
    rebuild(h, instance['uuid'], preserve_ephemeral=True)
    assert marked()
    rebuild(h, instance['uuid'])
    assert not marked()


def test_redelivery_of_an_interrupted_rebuild_completes_it(h):
    """A rebuild killed after it stopped the guest: recovery settles the
    record on the stopped guest; the redelivered request rebuilds and
    starts it, as the first attempt would have."""
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']
    ctx = mf.context()
    h.domain(uuid).destroy()
    h.force_record(uuid, task_state='rebuilding', task_request_id=ctx['request_id'],
                   rebuild={'request_id': ctx['request_id'], 'start': True})
    manager = type(h.manager)(h.conf, h.driver, h.journal, h.notifier)
    manager.recover()
    assert states_of(h.info(uuid)) == ('stopped', None, states.SHUTDOWN)
    h.manager = manager
    record = rebuild(h, uuid, ctx=ctx)
    assert states_of(record) == ('active', None, states.RUNNING)
    assert record['image_ref'] == NEW_IMAGE
    # Another request on the stopped guest would have kept it stopped.
    h.call('power_off', instance={'uuid': uuid})
    assert states_of(rebuild(h, uuid)) == ('stopped', None, states.SHUTDOWN)


def test_a_volume_root_is_refused(h):
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']
    record = h.journal.get_instance(uuid)
    spec = dict(record['spec'], block_device_info={
        'root_device_name': '/dev/vda', 'block_device_mapping': [
            {'mount_device': '/dev/vda', 'connection_info': {
                'driver_volume_type': 'local', 'data': {'device_path': '/dev/null'}}}]})
    h.force_record(uuid, spec=spec)
    with pytest.raises(exception.InvalidRequest) as info:
        rebuild(h, uuid)
    assert info.value.field == 'image_meta'
    assert h.info(uuid)['vm_state'] == 'active'


def test_admin_password_never_stored_nor_reported_nor_logged(h, caplog):
    caplog.set_level(logging.DEBUG)
    secret = 'RebuildPw-' + mf.new_uuid()
    instance = mf.make_instance(config_drive=True)
    h.spawn(instance)
    record = rebuild(h, instance['uuid'], admin_password=secret)
    with pytest.raises(exception.ImageNotFound):
        rebuild(h, instance['uuid'], image='img-missing', admin_password=secret)
    assert secret.encode() not in h.journal_bytes()
    assert secret not in repr(h.notifier.calls)
    assert secret not in repr(h.call('list_instances'))
    assert secret not in caplog.text
    assert secret not in repr(record)


def test_a_second_attempt_after_staged_files_leaves_nothing_behind(h):
    """Kernel and ramdisk are hardlinks of the cached images: staging them
    again over an interrupted attempt's, and swapping them over the same
    file, must still leave no staged or temporary file (nor one the killed
    attempt was writing)."""
    instance = mf.make_instance(kernel_id=NEW_IMAGE, ramdisk_id=NEW_IMAGE,
                                config_drive=True)
    h.spawn(instance)
    uuid = instance['uuid']
    spec = h.journal.get_instance(uuid)['spec']
    plan, _spec = h.manager.planner.rebuild(spec, {'id': NEW_IMAGE})
    h.driver.prepare_rebuild(plan)      # the attempt a restart cut short
    assert set(leftovers(h, instance)) >= {'disk.rebuild', 'kernel.rebuild',
                                           'ramdisk.rebuild', 'disk.config.rebuild'}
    # ... and the temp files of the files it was making when it was killed.
    for temp in ('.disk.rebuild.k1ll3d.part', '.disk.config.rebuild.k1ll3d.part'):
        with open(os.path.join(h.instance_dir(instance), temp), 'w') as f:
            f.write('half')
    record = rebuild(h, uuid)
    assert states_of(record) == ('active', None, states.RUNNING)
    assert [n for n in os.listdir(h.instance_dir(instance))
            if n.endswith(('.rebuild', '.part'))] == []


def test_the_log_masking_covers_the_rebuild_password():
    """A rebuild request printed whole (debug, a traceback) loses its
    admin_password: the envelope's redaction and the log formatter's mask."""
    import json

    from compute_agent import log
    from compute_agent.rpc import envelope
    secret = 'RbMask-' + mf.new_uuid()
    args = {'instance_uuid': mf.new_uuid(), 'image_meta': {'id': NEW_IMAGE},
            'admin_password': secret, 'preserve_ephemeral': False}
    inner = {'method': 'rebuild', 'args': args, '_unique_id': 'u1'}
    body = {'oslo.version': '2.0', 'oslo.message': json.dumps(inner)}
    assert secret not in repr(envelope.redact(body))
    for text in (json.dumps(inner), repr(inner), json.dumps(body),
                 'rebuild(%s)' % ', '.join('%s=%s' % kv for kv in args.items())):
        assert secret in text and secret not in log.mask(text)


def test_an_iso_image_becomes_a_cdrom_root_and_the_record_says_so(h):
    with open(os.path.join(h.store, 'img-iso'), 'wb') as f:
        f.truncate(1 << 20)
    instance = mf.make_instance()
    h.spawn(instance)
    assert h.info(instance['uuid'])['devices']['root'] == 'vda'
    record = rebuild(h, instance['uuid'], image='img-iso', meta={'disk_format': 'iso'})
    assert record['devices']['root'] == 'hda'
    assert "device='cdrom'" in h.domain(instance['uuid']).XMLDesc(0)
    # And back to a disk image.
    assert rebuild(h, instance['uuid'])['devices']['root'] == 'vda'


def test_rescue_unrescue_and_destroy_follow_the_rebuilt_guest(h):
    instance = mf.make_instance(config_drive=True)
    h.spawn(instance)
    uuid = instance['uuid']
    rebuild(h, uuid)
    rebuilt_xml = h.domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    h.call('rescue', instance={'uuid': uuid})
    rescue_xml = h.domain(uuid).XMLDesc(0)
    assert 'disk.rescue' in rescue_xml
    # The rescued guest's second disk is the rebuilt root disk.
    assert backing_image(h, instance) == cached(h, NEW_IMAGE)
    h.call('unrescue', instance={'uuid': uuid})
    assert h.domain(uuid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) == rebuilt_xml
    h.call('destroy', instance={'uuid': uuid})
    assert h.domain(uuid) is None
    assert not os.path.exists(h.instance_dir(instance))
