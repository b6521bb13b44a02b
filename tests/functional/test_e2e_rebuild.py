"""rebuild end to end (issue 15, must-show 4): the real agent over RabbitMQ,
libvirtd + QEMU guests that really boot, a Linux bridge and a local file
volume.

Two raw images in the module's image store start with different
``CA-MARKER`` lines; the test guest prints ``DISK <name> SERIAL <serial>
MARKER <text>`` for each disk at boot (tools/build-test-guest.sh), so the
console says which image the root disk (vda) was made from, which marker
the volume and the ephemeral disk carry, and which NIC it configured.

Two guests, each used by one test:

* ``main``: running, on a bridge VIF with an address (anti-spoofing
  filter on, the default) and with a local file volume attached after
  spawn; rebuilt onto the other image with a new password; an unknown
  image and a wrong checksum leave it untouched; a rebuild killed (SIGKILL)
  after the start, with the guest off, is completed by its redelivery.
* ``eph``: with an ephemeral disk, stopped before its rebuilds: it stays
  stopped, and ``preserve_ephemeral`` keeps a marker written onto the
  ephemeral disk (with ``qemu-io``, while it is stopped), which a rebuild
  without it leaves blank.
"""

import hashlib
import io
import ipaddress
import json
import re
import secrets
import subprocess
import uuid as uuidlib

import pytest
from pyroute2 import IPRoute

try:
    from tests.functional import storage_fixture as sf
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import InFlight
except ImportError:
    import storage_fixture as sf
    from agent_fixture import (  # noqa: F401
        agent, open_libvirt, test_guest, wait_until)
    from agent_messages import InFlight

from compute_agent.rpc.client import RemoteError

IMAGE_A, IMAGE_B = 'rb-img-a', 'rb-img-b'
MARK_A, MARK_B = 'rb-image-a', 'rb-image-b'
BOOT_TIMEOUT = 90


def without_power_check(record):
    """A record without ``power_checked_at``: a power check (after the
    guest's start event, say) may stamp it between a reply and a later
    get_info."""
    return {k: v for k, v in record.items() if k != 'power_checked_at'}

def make_image(agent, image_id, marker):
    """A 1 MiB raw image starting with ``CA-MARKER <marker>``; its sha256."""
    path = agent.images / image_id
    sf.make_backing_file(path, marker, size=1 << 20)
    path.chmod(0o644)
    return 'sha256:' + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope='module')
def images(agent):
    return {IMAGE_A: make_image(agent, IMAGE_A, MARK_A),
            IMAGE_B: make_image(agent, IMAGE_B, MARK_B)}


def meta(image_id, checksum=None):
    return {'id': image_id, 'disk_format': 'raw', 'checksum': checksum}


def spawn(agent, label, admin_password, network_info=(), **extra):
    inst = agent.make_instance(label, image_ref=IMAGE_A, **extra)
    agent.instances[inst['uuid']] = inst
    record = agent.call('spawn', instance=inst, image_meta=meta(IMAGE_A),
                        network_info=list(network_info), block_device_info=None,
                        admin_password=admin_password, injected_files=[])
    agent.wait_console(inst['uuid'], 'READY', timeout=BOOT_TIMEOUT)
    return inst, record


def disk_marker(console, name):
    found = re.findall(r'^DISK %s SERIAL \S+ MARKER (\S+)' % name, console, re.M)
    return found[-1] if found else None


def volume_line(console, serial):
    found = re.findall(r'^(?:HOTPLUG-)?DISK (\S+) SERIAL %s MARKER (\S+)'
                       % re.escape(serial), console, re.M)
    return found[-1] if found else None


def config_drive_meta(agent, inst):
    """meta_data.json of the config drive file the agent wrote."""
    import pycdlib
    iso = pycdlib.PyCdlib()
    iso.open(str(agent.instance_dir(inst) / 'disk.config'))
    try:
        buf = io.BytesIO()
        iso.get_file_from_iso_fp(buf, rr_path='/openstack/latest/meta_data.json')
    finally:
        iso.close()
    return json.loads(buf.getvalue())


def domain(uuid):
    """(libvirt id (-1 when off), inactive XML) of the instance's domain."""
    import libvirt
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        return dom.ID(), dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        lv.close()


def master_of(name):
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=name)
        return links[0].get_attr('IFLA_MASTER') if links else None


def link_index(name):
    with IPRoute() as ipr:
        return ipr.link_lookup(ifname=name)[0]


def rebuild_events(agent, uuid, since):
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid
                       and r.get('event', '').startswith('rebuild.')
                       and r.get('event') != 'rebuild.start', 30, 'rebuild end', since)
    return [(r['event'], r['vm_state'], r['task_state'], r['power_state'])
            for r in agent.reports.states(uuid, since)]


@pytest.fixture(scope='module')
def main(agent, images, tmp_path_factory):
    g = type('Main', (), {})()
    g.bridge, g.tap = agent.fresh_link('cabr'), agent.fresh_link('tapca')
    cidr = ipaddress.ip_network('10.%d.%d.0/24' % (secrets.randbelow(200) + 20,
                                                   secrets.randbelow(250)))
    g.ip = str(cidr[11])
    g.vif = {'id': str(uuidlib.uuid4()),
             'address': 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3)),
             'type': 'bridge', 'devname': g.tap,
             'network': {'id': 'net-rb', 'bridge': g.bridge, 'label': 'rb', 'mtu': 1500,
                         'subnets': [{'cidr': str(cidr), 'gateway': None,
                                      'ips': [{'address': g.ip}], 'dns': []}]},
             'details': {}}
    g.old_password = 'RbOld-' + secrets.token_hex(8)
    g.inst, _ = spawn(agent, 'main', g.old_password, network_info=[g.vif])
    g.uuid = g.inst['uuid']
    g.volume_id = 'vrb-' + uuidlib.uuid4().hex
    g.serial = g.volume_id[:20]
    vol_dir = agent.root / 'volumes'
    vol_dir.mkdir(exist_ok=True)
    vol_dir.chmod(0o755)
    g.volume_path = sf.make_backing_file(str(vol_dir / 'rb-vol'), 'rb-vol')
    g.attached = agent.call('attach_volume', instance_uuid=g.uuid, volume_id=g.volume_id,
                            connection_info={'driver_volume_type': 'local',
                                             'data': {'device_path': g.volume_path}})
    wait_until(lambda: volume_line(agent.console(g.uuid), g.serial), 30,
               'the attached volume on the console')
    return g


def test_rebuild_boots_the_other_image_with_volume_vif_and_new_password(agent, images,
                                                                        main):
    before = agent.get_info(main.uuid)
    assert before['image_ref'] == IMAGE_A
    assert [v['volume_id'] for v in before['volumes']] == [main.volume_id]
    assert disk_marker(agent.console(main.uuid), 'vda') == MARK_A
    assert config_drive_meta(agent, main.inst)['admin_pass'] == main.old_password
    old_id, _ = domain(main.uuid)
    new_password = 'RbNew-' + secrets.token_hex(8)

    mark, since = agent.console_mark(main.uuid), agent.reports.mark()
    record = agent.call('rebuild', instance_uuid=main.uuid,
                        image_meta=meta(IMAGE_B, images[IMAGE_B]),
                        admin_password=new_password, preserve_ephemeral=False)
    assert rebuild_events(agent, main.uuid, since) == [
        ('rebuild.start', 'active', 'rebuilding', 1),
        ('rebuild.end', 'active', None, 1)]
    assert (record['vm_state'], record['task_state'], record['power_state']) == (
        'active', None, 1)
    assert record['image_ref'] == IMAGE_B and record['error'] is None
    # The record keeps uuid, name, volume, VIF and its filter.
    for key in ('uuid', 'name', 'volumes', 'vifs', 'filters'):
        assert record[key] == before[key], key
    # The devices as a spawn of the stored request would choose them: the
    # attached volume among them now, where it is.
    assert record['devices'] == dict(before['devices'],
                                     volume0=before['volumes'][0]['device'])
    assert without_power_check(agent.get_info(main.uuid)) == without_power_check(record)

    # The guest booted again, from the other image, with its volume and NIC.
    console = agent.wait_console(main.uuid, 'READY', timeout=BOOT_TIMEOUT, since=mark)
    assert 'COMPUTE-AGENT-TEST-GUEST BOOTED' in console
    assert disk_marker(console, 'vda') == MARK_B, console
    assert volume_line(console, main.serial)[1] == 'rb-vol', console
    assert 'INSTANCE-UUID: %s' % main.uuid in console
    assert re.search(r'^NET-CONFIGURED: \S+ %s/24 %s$' % (re.escape(main.ip),
                     re.escape(main.vif['address'])), console, re.M), console
    new_id, xml = domain(main.uuid)
    assert new_id != old_id
    assert not [p.name for p in agent.instance_dir(main.inst).iterdir()
                if p.name.endswith(('.rebuild', '.part'))]
    assert main.vif['address'] in xml and "filterref filter=" in xml
    assert main.serial in xml and main.volume_path in xml
    assert master_of(main.tap) == link_index(main.bridge)

    # The config drive the agent wrote carries the new password.
    md = config_drive_meta(agent, main.inst)
    assert md['admin_pass'] == new_password and md['uuid'] == main.uuid
    log = agent.log_file.read_text(errors='replace')
    assert new_password not in log and main.old_password not in log

    # A hard reboot redefines the guest from the stored request: the new
    # image's disk and the volume again.
    mark = agent.console_mark(main.uuid)
    agent.call('reboot', instance={'uuid': main.uuid}, reboot_type='HARD')
    console = agent.wait_console(main.uuid, 'READY', timeout=BOOT_TIMEOUT, since=mark)
    assert disk_marker(console, 'vda') == MARK_B, console
    assert volume_line(console, main.serial)[1] == 'rb-vol', console


def test_an_image_that_cannot_be_had_leaves_the_guest_untouched(agent, images, main):
    before = agent.get_info(main.uuid)
    dom_id, xml = domain(main.uuid)
    disk = agent.instance_dir(main.inst) / 'disk'
    inode = disk.stat().st_ino
    for image_meta, error in ((meta('rb-no-such-image'), 'ImageNotFound'),
                              (meta(IMAGE_A, 'sha256:' + '0' * 64),
                               'ImageChecksumMismatch')):
        since = agent.reports.mark()
        with pytest.raises(RemoteError) as info:
            agent.call('rebuild', instance_uuid=main.uuid, image_meta=image_meta)
        assert info.value.exc_type == error
        report = agent.reports.wait(
            lambda r: r.get('instance_uuid') == main.uuid
            and r.get('event') == 'rebuild.error', 30, 'rebuild.error', since)
        assert (report['vm_state'], report['task_state'], report['power_state']) == (
            before['vm_state'], None, before['power_state'])
        after = agent.get_info(main.uuid)
        assert (after['vm_state'], after['task_state'], after['power_state']) == (
            before['vm_state'], None, before['power_state'])
        assert after['image_ref'] == before['image_ref']
        assert after['error']['class'] == error
        # The same running guest (same libvirt id), the same root disk file.
        assert domain(main.uuid) == (dom_id, xml)
        assert disk.stat().st_ino == inode
        assert not [p.name for p in agent.instance_dir(main.inst).iterdir()
                    if p.name.endswith('.rebuild')]


def write_ephemeral_marker(path, marker, workdir):
    src = workdir / 'marker'
    src.write_bytes(('CA-MARKER %s\n' % marker).encode().ljust(512, b'\0'))
    subprocess.run(['qemu-io', '-f', 'qcow2', '-c', 'write -s %s 0 512' % src, str(path)],
                   check=True, capture_output=True, timeout=60)


def test_stopped_guest_stays_stopped_and_preserve_ephemeral(agent, images, tmp_path):
    password = 'RbEph-' + secrets.token_hex(8)
    inst, _ = spawn(agent, 'eph', password,
                    flavor={'memory_mb': 128, 'vcpus': 1, 'root_gb': 0, 'ephemeral_gb': 1})
    uuid = inst['uuid']
    console = agent.console(uuid)
    assert disk_marker(console, 'vda') == MARK_A and disk_marker(console, 'vdb') == '-'
    agent.call('power_off', instance={'uuid': uuid}, timeout=30)
    write_ephemeral_marker(agent.instance_dir(inst) / 'disk.local', 'rb-eph-kept', tmp_path)

    # Stopped, preserve_ephemeral, no password: stays stopped, keeps the
    # ephemeral disk and the password the spawn gave.
    since = agent.reports.mark()
    record = agent.call('rebuild', instance_uuid=uuid, image_meta=meta(IMAGE_B),
                        preserve_ephemeral=True)
    assert rebuild_events(agent, uuid, since) == [
        ('rebuild.start', 'stopped', 'rebuilding', 4),
        ('rebuild.end', 'stopped', None, 4)]
    assert (record['vm_state'], record['power_state'], record['image_ref']) == (
        'stopped', 4, IMAGE_B)
    assert domain(uuid)[0] == -1        # not running
    assert config_drive_meta(agent, inst)['admin_pass'] == password
    mark = agent.console_mark(uuid)
    agent.call('power_on', instance={'uuid': uuid})
    console = agent.wait_console(uuid, 'READY', timeout=BOOT_TIMEOUT, since=mark)
    assert disk_marker(console, 'vda') == MARK_B, console
    assert disk_marker(console, 'vdb') == 'rb-eph-kept', console

    # Running, without preserve_ephemeral: a blank ephemeral disk, running.
    mark = agent.console_mark(uuid)
    record = agent.call('rebuild', instance_uuid=uuid, image_meta=meta(IMAGE_A))
    assert (record['vm_state'], record['power_state'], record['image_ref']) == (
        'active', 1, IMAGE_A)
    console = agent.wait_console(uuid, 'READY', timeout=BOOT_TIMEOUT, since=mark)
    assert disk_marker(console, 'vda') == MARK_A, console
    assert disk_marker(console, 'vdb') == '-', console
    assert password not in agent.log_file.read_text(errors='replace')


def test_redelivery_completes_a_rebuild_killed_after_it_stopped_the_guest(agent, images,
                                                                          main):
    """SIGKILL as the rebuild starts; the guest is then off, as the killed
    rebuild could have left it. Recovery settles on ``stopped``; the
    redelivered request completes the rebuild and starts the guest, since
    it was running before."""
    image = IMAGE_A if agent.get_info(main.uuid)['image_ref'] == IMAGE_B else IMAGE_B
    marker = MARK_A if image == IMAGE_A else MARK_B
    mark, since = agent.console_mark(main.uuid), agent.reports.mark()
    call = InFlight(agent, 'rebuild', instance_uuid=main.uuid, image_meta=meta(image))
    agent.reports.wait(lambda r: r.get('event') == 'rebuild.start'
                       and r.get('instance_uuid') == main.uuid, 60, 'rebuild.start', since)
    agent.kill()
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(main.uuid)
        if dom.isActive():
            dom.destroy()
    finally:
        lv.close()
    restart = agent.reports.mark()
    agent.start()
    record = call.reply()
    recovered = [(r['vm_state'], r['power_state']) for r in agent.reports.states(
        main.uuid, restart) if r['event'] == 'recover']
    assert recovered and recovered[0] == ('stopped', 4), recovered
    assert (record['vm_state'], record['task_state'], record['power_state'],
            record['error'], record['image_ref']) == ('active', None, 1, None, image)
    assert without_power_check(agent.get_info(main.uuid)) == without_power_check(record)
    assert domain(main.uuid)[0] != -1
    console = agent.wait_console(main.uuid, 'READY', timeout=BOOT_TIMEOUT, since=mark)
    assert disk_marker(console, 'vda') == marker, console
    assert not [p.name for p in agent.instance_dir(main.inst).iterdir()
                if p.name.endswith(('.rebuild', '.part'))]
