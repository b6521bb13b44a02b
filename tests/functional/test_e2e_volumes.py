"""Volumes end to end: the real agent, libvirtd + QEMU, tgtd and qemu-nbd.

One agent and one private storage set (a tgtd on 127.0.0.1, qemu-nbd
exports) per module; three guests shared by the tests:

* ``main``: spawned with an iSCSI volume (CHAP, through tgtd) and an NBD
  volume (unix socket); hot attach/detach and the bad-input checks run on it.
* ``root``: boots with an iSCSI volume as its root device and no local disk.
* ``noacpi``: its kernel runs with ``acpi=off`` (image property
  ``os_command_line``), so it never releases a hot-unplugged device.

The guest identifies volumes by ``/sys/block/*/serial`` (the disk's
``<serial>``, the volume id cut to 20 characters) and prints the marker the
test wrote at the start of each backing file (tools/build-test-guest.sh).
"""

import os
import re
import shutil
import tempfile
import uuid as uuidlib

import libvirt
import pytest

try:
    from tests.functional import storage_fixture as sf
    from tests.functional.agent_fixture import (  # noqa: F401
        BOOT_MARKER, IMAGE_META, WORK_ROOT, open_libvirt, run_agent, test_guest,
        wait_until)
except ImportError:
    import storage_fixture as sf
    from agent_fixture import (  # noqa: F401
        BOOT_MARKER, IMAGE_META, WORK_ROOT, open_libvirt, run_agent, test_guest,
        wait_until)

from compute_agent.rpc.client import RemoteError
from compute_agent.virt import config
from compute_agent.volume import secrets

DETACH_TIMEOUT = 4
CHAP = ('causer', 'chap-' + uuidlib.uuid4().hex[:12])


def vid(label):
    """A volume id longer than a serial (20 characters keep its label)."""
    return 'v%s-%s' % (label, uuidlib.uuid4().hex)


def serial(volume_id):
    return volume_id[:20]


@pytest.fixture(scope='module')
def storage():
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix='volumes-', dir=WORK_ROOT)
    os.chmod(workdir, 0o755)
    tgtd = sf.Tgtd(workdir).start()
    servers = []
    store = type('Storage', (), {})()
    store.dir, store.tgtd = workdir, tgtd

    def nbd(image, export, tcp=False):
        server = sf.NbdServer(workdir, image, export, tcp=tcp).start()
        servers.append(server)
        return server
    store.nbd = nbd
    store.file = lambda name, marker: sf.make_backing_file(os.path.join(workdir, name), marker)
    yield store
    for server in servers:
        server.stop()
    tgtd.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope='module')
def agent(storage, test_guest):
    yield from run_agent(test_guest, 'volumes', lambda env: env.write_config(
        libvirt={'device_detach_timeout': DETACH_TIMEOUT}))


def bdm(dev, volume_id, kind, data):
    return {'mount_device': '/dev/' + dev, 'volume_id': volume_id,
            'connection_info': {'driver_volume_type': kind, 'data': data}}


def domain_xml(uuid, inactive=False):
    lv = open_libvirt()
    try:
        return lv.lookupByUUIDString(uuid).XMLDesc(
            libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
    finally:
        lv.close()


def serials_in(xml):
    return {d.serial: d.target_dev for d in config.Domain.parse(xml).disks if d.serial}


def our_secrets():
    lv = open_libvirt()
    try:
        return {s.usageID() for s in lv.listAllSecrets(0)
                if (s.usageID() or '').startswith(secrets.USAGE_PREFIX)}
    finally:
        lv.close()


@pytest.fixture(scope='module')
def main(agent, storage):
    """The guest spawned with an iSCSI (CHAP) and an NBD volume."""
    g = type('Guest', (), {})()
    g.iscsi_id, g.nbd_id = vid('iscsi'), vid('nbd')
    g.iscsi_file = storage.file('main-iscsi', 'm-iscsi')
    g.nbd_file = storage.file('main-nbd', 'm-nbd')
    g.iscsi_data = storage.tgtd.add_lun(g.iscsi_file, chap=CHAP)
    g.nbd_data = storage.nbd(g.nbd_file, 'main-nbd').data()
    g.bdi = {'root_device_name': None, 'block_device_mapping': [
        bdm('vdb', g.iscsi_id, 'iscsi', g.iscsi_data),
        bdm('vdc', g.nbd_id, 'nbd', g.nbd_data)]}
    meta = {'write_marker': '%s:g-iscsi %s:g-nbd' % (serial(g.iscsi_id), serial(g.nbd_id))}
    g.inst, g.record = agent.spawn(label='main', metadata=meta, block_device_info=g.bdi)
    g.uuid = g.inst['uuid']
    g.boot_console = agent.wait_console(g.uuid, 'READY', timeout=90)
    return g


def reports_until(agent, uuid, since, event):
    """The instance's reports after ``since``, once ``event`` has arrived
    (a call's reply may come before its last report is consumed here)."""
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid and r.get('event') == event,
                       30, event, since)
    return agent.reports.states(uuid, since)


def disk_line(console, volume_id, kind='DISK'):
    m = re.search(r'^%s (\S+) SERIAL %s MARKER (\S+)' % (kind, re.escape(serial(volume_id))),
                  console, re.M)
    return m and (m.group(1), m.group(2))


# -- must-show 1: spawn with two volumes ----------------------------------------

def test_spawn_with_iscsi_and_nbd_volumes(agent, main):
    console = main.boot_console
    assert disk_line(console, main.iscsi_id)[1] == 'm-iscsi', console
    assert disk_line(console, main.nbd_id)[1] == 'm-nbd', console
    # The guest's writes land in the backing files (through tgtd, qemu-nbd).
    assert re.search(r'^WROTE \S+ SERIAL %s$' % serial(main.iscsi_id), console, re.M)
    assert re.search(r'^WROTE \S+ SERIAL %s$' % serial(main.nbd_id), console, re.M)
    assert sf.guest_write(main.iscsi_file) == 'CA-GUEST g-iscsi'
    assert sf.guest_write(main.nbd_file) == 'CA-GUEST g-nbd'

    info = agent.get_info(main.uuid)
    assert info['volumes'] == [
        {'volume_id': main.iscsi_id, 'device': 'vdb', 'driver_volume_type': 'iscsi'},
        {'volume_id': main.nbd_id, 'device': 'vdc', 'driver_volume_type': 'nbd'}]
    xml = domain_xml(main.uuid)
    assert serials_in(xml) == {serial(main.iscsi_id): 'vdb', serial(main.nbd_id): 'vdc'}
    # CHAP: a libvirt secret carries the password; the XML only names it.
    assert CHAP[1] not in xml and CHAP[1] not in domain_xml(main.uuid, inactive=True)
    disk = next(d for d in config.Domain.parse(xml).disks if d.target_dev == 'vdb')
    assert disk.auth_username == CHAP[0]
    assert disk.auth_secret_usage in our_secrets()
    assert CHAP[1] not in agent.log_file.read_text(errors='replace')


# -- must-show 3: hot attach and detach ------------------------------------------

def test_hot_attach_and_detach_local_volume(agent, storage, main):
    volume_id = vid('local')
    path = storage.file('hot-local', 'm-local')
    since = agent.reports.mark()
    record = agent.call('attach_volume', instance_uuid=main.uuid, volume_id=volume_id,
                        connection_info={'driver_volume_type': 'local',
                                         'data': {'device_path': path}})
    added = {'volume_id': volume_id, 'device': 'vdd', 'driver_volume_type': 'local'}
    assert record['volumes'][-1] == added     # null mountpoint: the next free name
    assert record['vm_state'] == 'active' and record['task_state'] is None
    events = [(r['event'], r['vm_state'], r['task_state'])
              for r in reports_until(agent, main.uuid, since, 'attach_volume.end')]
    assert events == [('attach_volume.start', 'active', 'attaching_volume'),
                      ('attach_volume.end', 'active', None)]
    # The guest sees it, found by serial, with the marker written beforehand.
    console = agent.wait_console(main.uuid, 'HOTPLUG-DISK', timeout=30)
    name, marker = wait_until(
        lambda: disk_line(agent.console(main.uuid), volume_id, 'HOTPLUG-DISK'), 30,
        'the hot-plugged disk on the console')
    assert marker == 'm-local', console
    for inactive in (False, True):      # live and persistent
        assert serials_in(domain_xml(main.uuid, inactive))[serial(volume_id)] == 'vdd'

    since = agent.reports.mark()
    record = agent.call('detach_volume', instance_uuid=main.uuid, volume_id=volume_id)
    assert added not in record['volumes']
    assert agent.get_info(main.uuid)['volumes'] == record['volumes']
    agent.wait_console(main.uuid, 'HOTPLUG-GONE %s' % name, timeout=30)
    for inactive in (False, True):
        assert serial(volume_id) not in serials_in(domain_xml(main.uuid, inactive))
    events = [(r['event'], r['task_state'])
              for r in reports_until(agent, main.uuid, since, 'detach_volume.end')]
    assert events == [('detach_volume.start', 'detaching_volume'),
                      ('detach_volume.end', None)]


# -- a redelivered request finishes the job ---------------------------------------------

def test_attach_adopts_a_disk_attached_but_not_recorded(agent, storage, main):
    """As after an agent killed between attachDeviceFlags and the record:
    the redelivered attach records the disk already there instead of adding
    a second one; a detach whose disk is already gone only updates the
    record."""
    volume_id = vid('adopt')
    path = storage.file('adopt-local', 'm-adopt')
    info = _local(path)
    from compute_agent.virt import builder
    disk = builder.volume_disk(agent_conf(agent), {'mount_device': '/dev/vdf',
                                                   'volume_id': volume_id,
                                                   'connection_info': info}, 'vdf', 'virtio')
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(main.uuid)
        flags = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
        dom.attachDeviceFlags(disk.to_xml(), flags)
        record = agent.call('attach_volume', instance_uuid=main.uuid, volume_id=volume_id,
                            connection_info=info)
        assert record['volumes'][-1] == {'volume_id': volume_id, 'device': 'vdf',
                                         'driver_volume_type': 'local'}
        for inactive in (False, True):
            targets = [d.target_dev for d in config.Domain.parse(
                domain_xml(main.uuid, inactive)).disks]
            assert targets.count('vdf') == 1 and len(targets) == len(set(targets))
        dom.detachDeviceFlags(disk.to_xml(), flags)
        wait_until(lambda: serial(volume_id) not in serials_in(domain_xml(main.uuid)), 30,
                   'the guest released the disk detached by hand')
    finally:
        lv.close()
    record = agent.call('detach_volume', instance_uuid=main.uuid, volume_id=volume_id)
    assert volume_id not in {v['volume_id'] for v in record['volumes']}


def test_agent_killed_mid_attach_settles_and_the_redelivery_finishes(agent, storage, main):
    """SIGKILL as soon as the attach has started: after the restart the
    volume is attached exactly once and recorded, whichever side of the
    attachDeviceFlags the kill landed on."""
    volume_id = vid('crash')
    path = storage.file('crash-local', 'm-crash')
    since = agent.reports.mark()
    agent.cast('attach_volume', instance_uuid=main.uuid, volume_id=volume_id,
               connection_info=_local(path))
    agent.wait_state(main.uuid, 'active', 'attaching_volume', since=since)
    agent.kill()
    agent.start()
    wait_until(lambda: volume_id in {v['volume_id'] for v in agent.get_info(main.uuid)['volumes']},
               60, 'the redelivered attach to finish')
    info = agent.get_info(main.uuid)
    assert [v['volume_id'] for v in info['volumes']].count(volume_id) == 1
    assert info['task_state'] is None and info['vm_state'] == 'active'
    for inactive in (False, True):
        serials = [d.serial for d in config.Domain.parse(domain_xml(main.uuid, inactive)).disks]
        assert serials.count(serial(volume_id)) == 1
    agent.wait_console(main.uuid, 'MARKER m-crash', timeout=30)
    agent.call('detach_volume', instance_uuid=main.uuid, volume_id=volume_id)


def agent_conf(agent):
    from oslo_config import cfg

    from compute_agent import conf as agent_conf_mod
    conf = cfg.ConfigOpts()
    agent_conf_mod.register_all(conf)
    conf([], default_config_files=[str(agent.config_file)])
    return conf


# -- must-show 7: bad input, nothing created ---------------------------------------

def _refused(agent, main, method, exc_type, field=None, **args):
    before_info = agent.get_info(main.uuid)
    before_xml = (serials_in(domain_xml(main.uuid)),
                  serials_in(domain_xml(main.uuid, inactive=True)))
    before_secrets = our_secrets()
    since = agent.reports.mark()
    with pytest.raises(RemoteError) as ei:
        agent.call(method, instance_uuid=main.uuid, **args)
    assert ei.value.exc_type == exc_type, ei.value
    if field:
        assert field in str(ei.value.value)
    after = agent.get_info(main.uuid)
    assert after['volumes'] == before_info['volumes']
    assert (after['vm_state'], after['task_state']) == ('active', None)
    assert (serials_in(domain_xml(main.uuid)),
            serials_in(domain_xml(main.uuid, inactive=True))) == before_xml
    assert our_secrets() == before_secrets
    return reports_until(agent, main.uuid, since, method + '.error'), ei.value


def _local(path='/dev/null'):
    return {'driver_volume_type': 'local', 'data': {'device_path': path}}


def test_unknown_volume_type_is_refused(agent, main):
    _refused(agent, main, 'attach_volume', 'InvalidRequest',
             'connection_info.driver_volume_type', volume_id=vid('x'),
             connection_info={'driver_volume_type': 'fibre_channel', 'data': {}})


@pytest.mark.parametrize('mountpoint, reason', [
    ('/dev/vdb', 'already in use'), ('/dev/sdb', 'must be /dev/vd')])
def test_bad_mountpoint_is_refused(agent, storage, main, mountpoint, reason):
    reports, err = _refused(agent, main, 'attach_volume', 'InvalidRequest', 'mountpoint',
                            volume_id=vid('x'), connection_info=_local(
                                storage.file('unused', 'x')), mountpoint=mountpoint)
    assert reason in str(err.value)
    # Reported with the states unchanged (docs: protocol-delivery).
    assert [(r['event'], r['vm_state'], r['task_state']) for r in reports] == [
        ('attach_volume.start', 'active', 'attaching_volume'),
        ('attach_volume.error', 'active', None)]


def test_volume_id_already_attached_is_refused(agent, storage, main):
    _refused(agent, main, 'attach_volume', 'InvalidRequest', 'volume_id',
             volume_id=main.nbd_id, connection_info=_local(storage.file('dup', 'x')))


def test_detach_of_unknown_volume_is_volume_not_found(agent, main):
    _refused(agent, main, 'detach_volume', 'VolumeNotFound', volume_id=vid('nope'))


def test_iscsi_portal_that_refuses_is_volume_attach_failed(agent, main):
    data = {'target_portal': '127.0.0.1:%d' % sf.free_port(),
            'target_iqn': 'iqn.2026-12.test.compute-agent:nothing', 'target_lun': 1,
            'auth_method': 'CHAP', 'auth_username': 'nobody', 'auth_password': 'pw-refused'}
    _refused(agent, main, 'attach_volume', 'VolumeAttachFailed', 'not reachable',
             volume_id=vid('refused'),
             connection_info={'driver_volume_type': 'iscsi', 'data': data})
    assert 'pw-refused' not in agent.log_file.read_text(errors='replace')


# -- must-show 2: boot from an iSCSI volume ------------------------------------------

def test_boot_from_iscsi_volume(agent, storage):
    volume_id = vid('root')
    path = storage.file('root-iscsi', 'm-root')
    data = storage.tgtd.add_lun(path)
    bdi = {'root_device_name': '/dev/vda',
           'block_device_mapping': [bdm('vda', volume_id, 'iscsi', data)]}
    inst, record = agent.spawn(label='root', block_device_info=bdi,
                               metadata={'write_marker': '%s:g-root' % serial(volume_id)})
    assert record['devices']['root'] == 'vda'
    assert record['volumes'] == [{'volume_id': volume_id, 'device': 'vda',
                                  'driver_volume_type': 'iscsi'}]
    console = agent.wait_console(inst['uuid'], 'READY', timeout=90)
    assert disk_line(console, volume_id) == ('vda', 'm-root'), console
    assert sf.guest_write(path) == 'CA-GUEST g-root'
    assert not (agent.instance_dir(inst) / 'disk').exists()
    disks = config.Domain.parse(domain_xml(inst['uuid'])).disks
    root = next(d for d in disks if d.target_dev == 'vda')
    assert (root.type, root.source_protocol) == ('network', 'iscsi')
    assert not any(d.source_file and d.source_file.endswith('/disk') for d in disks)
    agent.destroy(inst)


# -- must-show 3: a guest that ignores ACPI ----------------------------------------------

def test_detach_from_guest_ignoring_acpi_fails_and_keeps_the_volume(agent, storage):
    volume_id = vid('stuck')
    path = storage.file('stuck-local', 'm-stuck')
    bdi = {'root_device_name': None, 'block_device_mapping': [
        bdm('vdb', volume_id, 'local', {'device_path': path})]}
    image_meta = dict(IMAGE_META, properties={'os_command_line': 'acpi=off'})
    inst, _ = agent.spawn(label='noacpi', image_meta=image_meta, block_device_info=bdi)
    uuid = inst['uuid']
    console = agent.wait_console(uuid, 'READY', timeout=90)
    assert 'acpi=off' in console and disk_line(console, volume_id)[1] == 'm-stuck'
    since = agent.reports.mark()
    with pytest.raises(RemoteError) as ei:
        agent.call('detach_volume', instance_uuid=uuid, volume_id=volume_id)
    assert ei.value.exc_type == 'VolumeDetachFailed'
    assert 'did not release' in str(ei.value.value)
    info = agent.get_info(uuid)
    assert info['volumes'] == [{'volume_id': volume_id, 'device': 'vdb',
                                'driver_volume_type': 'local'}]
    assert (info['vm_state'], info['task_state']) == ('active', None)
    assert info['error']['class'] == 'VolumeDetachFailed'
    for inactive in (False, True):      # still in the guest and in its config
        assert serials_in(domain_xml(uuid, inactive)).get(serial(volume_id)) == 'vdb'
    assert 'HOTPLUG-GONE' not in agent.console(uuid)
    assert [(r['event'], r['vm_state'], r['task_state'])
            for r in reports_until(agent, uuid, since, 'detach_volume.error')] == [
        ('detach_volume.start', 'active', 'detaching_volume'),
        ('detach_volume.error', 'active', None)]
    agent.destroy(inst)


# -- must-show 5: volumes survive operations ------------------------------------------------

def _next_boot(agent, uuid, since):
    """The console of the boot that started after the mark ``since``, once
    it is READY (the console log is appended to across boots)."""
    def ready():
        text = agent.console(uuid, tail_lines=10000)[since:]
        return BOOT_MARKER in text and 'READY' in text and text
    return wait_until(ready, 90, 'the guest booted again and READY', interval=0.5)


def test_volumes_survive_reboot_power_cycle_rescue_and_agent_restart(agent, storage, main):
    volume_id = vid('keep')
    path = storage.file('keep-local', 'm-keep')
    agent.call('attach_volume', instance_uuid=main.uuid, volume_id=volume_id,
               connection_info=_local(path), mountpoint='/dev/vde')
    expected = agent.get_info(main.uuid)['volumes']
    ids = {v['volume_id']: v['device'] for v in expected}
    assert ids == {main.iscsi_id: 'vdb', main.nbd_id: 'vdc', volume_id: 'vde'}

    def check(step):
        for inactive in (False, True):      # the record agrees with libvirt
            assert serials_in(domain_xml(main.uuid, inactive)) == {
                serial(k): v for k, v in ids.items()}, step
        assert agent.get_info(main.uuid)['volumes'] == expected, step

    mark = agent.console_mark(main.uuid)
    agent.call('reboot', instance={'uuid': main.uuid}, reboot_type='HARD')
    console = _next_boot(agent, main.uuid, mark)
    for v, marker in ((volume_id, 'm-keep'), (main.nbd_id, 'm-nbd'),
                      (main.iscsi_id, 'm-iscsi')):
        assert disk_line(console, v)[1] == marker, console
    check('hard reboot')

    mark = agent.console_mark(main.uuid)
    agent.call('power_off', instance={'uuid': main.uuid}, timeout=0)
    agent.call('power_on', instance={'uuid': main.uuid})
    console = _next_boot(agent, main.uuid, mark)
    assert disk_line(console, volume_id)[1] == 'm-keep', console
    check('power off/on')

    mark = agent.console_mark(main.uuid)
    agent.call('rescue', instance={'uuid': main.uuid})
    console = _next_boot(agent, main.uuid, mark)
    for v, marker in ((volume_id, 'm-keep'), (main.nbd_id, 'm-nbd'),
                      (main.iscsi_id, 'm-iscsi')):
        assert disk_line(console, v)[1] == marker, console     # still attached
    assert agent.get_info(main.uuid)['volumes'] == expected
    mark = agent.console_mark(main.uuid)
    agent.call('unrescue', instance={'uuid': main.uuid})
    console = _next_boot(agent, main.uuid, mark)
    assert disk_line(console, volume_id)[1] == 'm-keep', console
    check('rescue and unrescue')

    agent.kill()
    agent.start()
    check('agent SIGKILL and restart')

    agent.call('detach_volume', instance_uuid=main.uuid, volume_id=volume_id)
    assert volume_id not in {v['volume_id'] for v in agent.get_info(main.uuid)['volumes']}


# -- destroy disconnects everything -----------------------------------------------------

def test_destroy_removes_the_chap_secret(agent, main):
    usage = next(d.auth_secret_usage for d in config.Domain.parse(
        domain_xml(main.uuid)).disks if d.target_dev == 'vdb')
    assert usage in our_secrets()
    agent.destroy(main.inst)
    assert usage not in our_secrets()
