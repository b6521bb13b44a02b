"""The guest builder's disks, volumes, config drive and device names, by XPath.

Each test builds a plan from a request (``builder_fixtures.make_request``)
and a fresh configuration, then reads the formatted XML back with XPath.
Random requests check that no two disks ever share a target device.
"""

import hashlib
import os
import string

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from compute_agent import exception
from compute_agent.virt.plan import DiskFile

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf

GiB = 1024 ** 3
MiB = 1024 ** 2
DIR = os.path.join(bf.INSTANCES_PATH, bf.INSTANCE_NAME)
one, xp = bf.one, bf.xp
plan_for, node_for = bf.plan_for, bf.node_for
files_by_name, assert_valid_and_defined = bf.files_by_name, bf.assert_valid_and_defined


# -- disks ------------------------------------------------------------------------

@pytest.mark.parametrize('cow,fmt', [(True, 'qcow2'), (False, 'raw')])
def test_root_format(cow, fmt):
    conf = bf.make_conf('kvm', {'use_cow_images': cow})
    node, plan = node_for(conf=conf, flavor={'root_gb': 5})
    assert one(bf.disk_by_dev(node, 'vda'), 'driver/@type') == fmt
    assert files_by_name(plan)['disk'] == DiskFile('disk', 'root', fmt=fmt,
                                                   size_bytes=5 * GiB,
                                                   image_id=bf.IMAGE_ID)
    rescue_node, _ = node_for(conf=conf, rescue=True)
    assert one(bf.disk_by_dev(rescue_node, 'vda'), 'driver/@type') == fmt
    assert one(bf.disk_by_dev(rescue_node, 'vdb'), 'driver/@type') == fmt


@pytest.mark.parametrize('cow,fmt', [(True, 'qcow2'), (False, 'raw')])
def test_ephemeral_and_swap_format(cow, fmt):
    """2012 get_guest_config: with use_cow_images every local disk is
    qcow2 (nova's Qcow2 backend: an overlay on a cached blank base); the
    config drive stays raw."""
    conf = bf.make_conf('kvm', {'use_cow_images': cow})
    node, plan = node_for(conf=conf, config_drive=True,
                          flavor={'ephemeral_gb': 2, 'swap': 32},
                          block_device_info=bf.bdi(ephemerals=[bf.ephemeral(1, 'vdd')]))
    files = files_by_name(plan)
    for name, dev, kind, size in (('disk.local', 'vdb', 'ephemeral', 2 * GiB),
                                  ('disk.swap', 'vdc', 'swap', 32 * MiB),
                                  ('disk.eph1', 'vdd', 'ephemeral', 1 * GiB)):
        disk = bf.disk_by_dev(node, dev)
        assert one(disk, 'source/@file') == DIR + '/' + name
        assert one(disk, 'driver/@type') == fmt, name
        assert files[name] == DiskFile(name, kind, fmt=fmt, size_bytes=size)
    assert one(bf.disk_by_dev(node, 'vdz'), 'driver/@type') == 'raw'
    assert files['disk.config'] == DiskFile('disk.config', 'config')
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('cache', ['none', 'writethrough', 'writeback', 'unsafe'])
def test_cache_mode_from_config(cache):
    conf = bf.make_conf('kvm', {'libvirt.disk_cachemode': cache})
    node, plan = node_for(conf=conf, config_drive=True,
                          flavor={'ephemeral_gb': 1, 'swap': 64},
                          block_device_info=bf.bdi(volumes=bf.all_volumes('vd')))
    for disk in xp(node, 'devices/disk'):
        if disk.get('type') == 'network':
            assert xp(disk, 'driver/@cache') == []
        else:
            assert one(disk, 'driver/@cache') == cache
            assert one(disk, 'driver/@name') == 'qemu'


@pytest.mark.parametrize('root_name', [None, '/dev/vda', '/dev/vdb'])
def test_root_omitted_when_a_volume_maps_the_root_device(root_name):
    dev = (root_name or '/dev/vda')[5:]
    node, plan = node_for('kvm', flavor={'ephemeral_gb': 1},
                          block_device_info=bf.bdi(root_device_name=root_name,
                                                   volumes=[bf.rbd_volume(dev)]))
    assert xp(node, "devices/disk[source/@file='%s/disk']" % DIR) == []
    assert one(bf.disk_by_dev(node, dev), 'source/@protocol') == 'rbd'
    assert plan.devices['root'] == dev
    assert plan.devices['volume0'] == dev
    assert 'disk' not in files_by_name(plan)
    assert_valid_and_defined(plan)


def test_iso_root_is_an_ide_cdrom():
    node, plan = node_for('kvm', disk_format='iso', flavor={'ephemeral_gb': 1})
    cdrom = bf.disk_by_dev(node, 'hda')
    assert (cdrom.get('type'), cdrom.get('device')) == ('file', 'cdrom')
    assert one(cdrom, 'target/@bus') == 'ide'
    assert xp(cdrom, 'readonly')
    assert one(cdrom, 'source/@file') == DIR + '/disk'
    assert [b.get('dev') for b in xp(node, 'os/boot')] == ['cdrom', 'hd']
    assert files_by_name(plan)['disk'] == DiskFile('disk', 'iso', image_id=bf.IMAGE_ID)
    assert plan.devices['root'] == 'hda'
    assert plan.devices['ephemeral'] == 'vdb'
    assert_valid_and_defined(plan)


def test_disk_local_on_the_second_device():
    node, plan = node_for('kvm', flavor={'ephemeral_gb': 3})
    local = bf.disk_by_dev(node, 'vdb')
    assert one(local, 'source/@file') == DIR + '/disk.local'
    assert one(local, 'driver/@type') == 'qcow2'       # use_cow_images
    assert plan.devices == {'root': 'vda', 'ephemeral': 'vdb'}
    assert files_by_name(plan)['disk.local'] == DiskFile(
        'disk.local', 'ephemeral', fmt='qcow2', size_bytes=3 * GiB)


@pytest.mark.parametrize('bdi', [
    bf.bdi(volumes=[bf.local_volume('vdb')]),
    bf.bdi(ephemerals=[bf.ephemeral(0, 'vdc')]),
    bf.bdi(ephemerals=[bf.ephemeral(1, 'vdb')]),
    bf.bdi(swap=bf.swap('vdb')),
], ids=['volume-on-vdb', 'bdi-ephemeral-0', 'bdi-ephemeral-on-vdb', 'bdi-swap-on-vdb'])
def test_no_disk_local(bdi):
    node, plan = node_for('kvm', flavor={'ephemeral_gb': 1}, block_device_info=bdi)
    assert xp(node, "devices/disk[source/@file='%s/disk.local']" % DIR) == []
    assert 'ephemeral' not in plan.devices
    assert 'disk.local' not in files_by_name(plan)
    assert_valid_and_defined(plan)


def test_no_disk_local_without_ephemeral_gb():
    node, plan = node_for('kvm', flavor={'ephemeral_gb': 0})
    assert 'disk.local' not in files_by_name(plan)
    assert bf.target_devs(node) == ['vda']


def test_block_device_info_ephemerals():
    node, plan = node_for('kvm', block_device_info=bf.bdi(ephemerals=[
        bf.ephemeral(0, 'vdb', size=2), bf.ephemeral(1, 'vdd', size=3),
        bf.ephemeral(7, 'vdk', size=1)]))
    for num, dev, size in ((0, 'vdb', 2), (1, 'vdd', 3), (7, 'vdk', 1)):
        disk = bf.disk_by_dev(node, dev)
        assert one(disk, 'source/@file') == '%s/disk.eph%d' % (DIR, num)
        assert plan.devices['ephemeral%d' % num] == dev
        assert files_by_name(plan)['disk.eph%d' % num] == DiskFile(
            'disk.eph%d' % num, 'ephemeral', fmt='qcow2', size_bytes=size * GiB)
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('flavor,bdi,expected_swap', [
    ({'swap': 64}, None, 'vdb'),
    ({'swap': 64, 'ephemeral_gb': 1}, None, 'vdc'),
    ({'swap': 64}, bf.bdi(ephemerals=[bf.ephemeral(0, 'vdb')]), 'vdc'),
    ({'swap': 64, 'ephemeral_gb': 1}, bf.bdi(ephemerals=[bf.ephemeral(0, 'vdb')]), 'vdc'),
    ({'swap': 64, 'ephemeral_gb': 1}, bf.bdi(ephemerals=[bf.ephemeral(1, 'vdc')]), 'vdd'),
    ({'swap': 64}, bf.bdi(ephemerals=[bf.ephemeral(0, 'vdb'), bf.ephemeral(1, 'vdc')]),
     'vdd'),
    ({'swap': 64}, bf.bdi(volumes=[bf.local_volume('vdb')]), None),
    ({'swap': 64, 'ephemeral_gb': 1}, bf.bdi(volumes=[bf.local_volume('vdc')]), None),
    ({'swap': 64}, bf.bdi(volumes=[bf.local_volume('vdc')]), 'vdb'),
    ({'swap': 64}, bf.bdi(swap=bf.swap('vdf', 128)), 'vdf'),
    ({'swap': 0}, bf.bdi(swap=bf.swap('vdc', 32)), 'vdc'),
    ({'swap': 0}, None, None),
], ids=['no-ephemeral', 'with-ephemeral', 'bdi-eph0-on-vdb', 'bdi-eph0-and-flavor-eph',
        'bdi-eph-on-vdc', 'two-bdi-ephs', 'volume-on-vdb', 'volume-on-vdc-after-eph',
        'volume-elsewhere', 'bdi-swap', 'bdi-swap-only', 'none'])
def test_swap_placement(flavor, bdi, expected_swap):
    node, plan = node_for('kvm', flavor=flavor, block_device_info=bdi)
    swaps = xp(node, "devices/disk[source/@file='%s/disk.swap']" % DIR)
    if expected_swap is None:
        assert swaps == []
        assert 'swap' not in plan.devices
        assert 'disk.swap' not in files_by_name(plan)
    else:
        assert [one(s, 'target/@dev') for s in swaps] == [expected_swap]
        assert plan.devices['swap'] == expected_swap
        size_mb = (bdi or {}).get('swap') and bdi['swap']['swap_size'] or flavor['swap']
        assert files_by_name(plan)['disk.swap'] == DiskFile(
            'disk.swap', 'swap', fmt='qcow2', size_bytes=size_mb * MiB)
    devs = bf.target_devs(node)
    assert len(devs) == len(set(devs))
    assert_valid_and_defined(plan)


# -- volumes ----------------------------------------------------------------------

def test_local_volumes():
    node, plan = node_for('kvm', block_device_info=bf.bdi(volumes=[
        bf.local_volume('vdc', '/var/lib/volumes/v.img'),
        bf.local_volume('vdd', '/dev/mapper/vg-vol')]))
    f = bf.disk_by_dev(node, 'vdc')
    assert (f.get('type'), f.get('device')) == ('file', 'disk')
    assert one(f, 'source/@file') == '/var/lib/volumes/v.img'
    assert (one(f, 'driver/@name'), one(f, 'driver/@type')) == ('qemu', 'raw')
    assert one(f, 'target/@bus') == 'virtio'
    b = bf.disk_by_dev(node, 'vdd')
    assert b.get('type') == 'block'
    assert one(b, 'source/@dev') == '/dev/mapper/vg-vol'
    assert xp(b, 'source/@file') == []
    assert (plan.devices['volume0'], plan.devices['volume1']) == ('vdc', 'vdd')
    # Volumes are attached, never created.
    assert {f.name for f in plan.files} == {'disk'}
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('portal,host,port', [
    ('10.0.0.2:3260', '10.0.0.2', '3260'),
    ('storage.example.com:3261', 'storage.example.com', '3261'),
    ('[2001:db8::5]:3260', '2001:db8::5', '3260'),
])
def test_iscsi_volume(portal, host, port):
    node, plan = node_for('kvm', block_device_info=bf.bdi(volumes=[
        bf.iscsi_volume('vdc', portal=portal, lun=3)]))
    disk = bf.disk_by_dev(node, 'vdc')
    assert (disk.get('type'), disk.get('device')) == ('network', 'disk')
    assert one(disk, 'source/@protocol') == 'iscsi'
    assert one(disk, 'source/@name') == 'iqn.2010-10.org.openstack:volume-1/3'
    assert [(h.get('name'), h.get('port')) for h in xp(disk, 'source/host')] == [
        (host, port)]
    assert xp(disk, 'source/auth') == []
    assert xp(disk, 'driver/@cache') == []
    assert_valid_and_defined(plan)


def test_iscsi_volume_with_chap():
    node, plan = node_for('kvm', block_device_info=bf.bdi(volumes=[
        bf.iscsi_volume('vdc', auth=True)]))
    disk = bf.disk_by_dev(node, 'vdc')
    assert one(disk, 'source/auth/@username') == 'chapuser'
    assert one(disk, 'source/auth/secret/@type') == 'iscsi'
    assert one(disk, 'source/auth/secret/@uuid') == bf.SECRET_UUID
    assert_valid_and_defined(plan)


def test_rbd_volume():
    node, plan = node_for('kvm', block_device_info=bf.bdi(volumes=[bf.rbd_volume('vdc')]))
    disk = bf.disk_by_dev(node, 'vdc')
    assert disk.get('type') == 'network'
    assert one(disk, 'source/@protocol') == 'rbd'
    assert one(disk, 'source/@name') == 'volumes/volume-1'
    assert [(h.get('name'), h.get('port')) for h in xp(disk, 'source/host')] == [
        ('10.0.0.1', '6789'), ('10.0.0.5', '6790')]
    assert one(disk, 'source/auth/@username') == 'cinder'
    assert one(disk, 'source/auth/secret/@type') == 'ceph'
    assert one(disk, 'source/auth/secret/@uuid') == bf.SECRET_UUID
    assert_valid_and_defined(plan)


def test_nfs_volume():
    conf = bf.make_conf('kvm', {'libvirt.nfs_mount_point_base': '/mnt/nfs-base'})
    node, plan = node_for(conf=conf, block_device_info=bf.bdi(volumes=[
        bf.nfs_volume('vdc', export='10.0.0.3:/exports/vol', name='volume-9')]))
    disk = bf.disk_by_dev(node, 'vdc')
    digest = hashlib.sha1(b'10.0.0.3:/exports/vol').hexdigest()
    assert disk.get('type') == 'file'
    assert one(disk, 'source/@file') == '/mnt/nfs-base/%s/volume-9' % digest
    assert one(disk, 'driver/@cache') == 'none'
    assert_valid_and_defined(plan)


def test_nfs_mount_point_base_defaults_under_state_path():
    node, _ = node_for('kvm', block_device_info=bf.bdi(volumes=[bf.nfs_volume('vdc')]))
    digest = hashlib.sha1(b'10.0.0.3:/exports/vol').hexdigest()
    assert one(bf.disk_by_dev(node, 'vdc'), 'source/@file') == os.path.join(
        bf.STATE_PATH, 'mnt', digest, 'volume-1')


def test_unknown_volume_type_is_an_invalid_request():
    vol = bf.local_volume('vdc')
    vol['connection_info']['driver_volume_type'] = 'fibre_channel'
    with pytest.raises(exception.InvalidRequest) as err:
        plan_for('kvm', block_device_info=bf.bdi(volumes=[vol]))
    assert 'driver_volume_type' in err.value.field


# -- config drive -----------------------------------------------------------------

@pytest.mark.parametrize('instance_flag,force', [(True, False), (False, True), (True, True)])
@pytest.mark.parametrize('virt_type', ['kvm', 'qemu', 'xen', 'uml'])
def test_config_drive_at_the_last_device(virt_type, instance_flag, force):
    conf = bf.make_conf(virt_type, {'force_config_drive': force})
    node, plan = node_for(conf=conf, config_drive=instance_flag)
    last = bf.PREFIX[virt_type] + 'z'
    disk = bf.disk_by_dev(node, last)
    assert one(disk, 'source/@file') == DIR + '/disk.config'
    assert disk.get('device') == 'disk'
    assert plan.devices['config_drive'] == last
    assert files_by_name(plan)['disk.config'] == DiskFile('disk.config', 'config')
    assert_valid_and_defined(plan)


def test_no_config_drive():
    node, plan = node_for('kvm', config_drive=False)
    assert 'config_drive' not in plan.devices
    assert 'disk.config' not in files_by_name(plan)
    assert bf.target_devs(node) == ['vda']


def test_config_drive_skips_a_mapped_last_device():
    node, plan = node_for('kvm', config_drive=True, block_device_info=bf.bdi(
        volumes=[bf.local_volume('vdz')], ephemerals=[bf.ephemeral(1, 'vdy')]))
    assert plan.devices['config_drive'] == 'vdx'
    assert one(bf.disk_by_dev(node, 'vdx'), 'source/@file') == DIR + '/disk.config'
    assert_valid_and_defined(plan)


# -- device names -----------------------------------------------------------------

@pytest.mark.parametrize('virt_type,prefix,bus', [
    ('kvm', 'vd', 'virtio'), ('qemu', 'vd', 'virtio'), ('xen', 'xvd', 'xen'),
    ('uml', 'ubd', 'uml')])
def test_prefix_by_virt_type(virt_type, prefix, bus):
    _check_prefix(bf.make_conf(virt_type), virt_type, prefix, bus)


@pytest.mark.parametrize('prefix', ['vd', 'xvd', 'ubd', 'sd', 'hd'])
def test_prefix_by_disk_prefix_option(prefix):
    conf = bf.make_conf('kvm', {'libvirt.disk_prefix': prefix})
    _check_prefix(conf, 'kvm', prefix, bf.BUS[prefix])


def _check_prefix(conf, virt_type, p, bus):
    # A volume on the third device: swap would go there, so it is dropped
    # (the volume replaces it); an ephemeral claims the fourth, the volume
    # the last, so the config drive moves one down.
    node, plan = node_for(conf=conf, config_drive=True, kernel_id='k',
                          flavor={'ephemeral_gb': 1, 'swap': 64},
                          block_device_info=bf.bdi(
                              ephemerals=[bf.ephemeral(1, p + 'd')],
                              volumes=[bf.local_volume(p + 'c'),
                                       bf.local_volume(p + 'z', '/dev/sdx')]))
    assert plan.devices == {'root': p + 'a', 'ephemeral': p + 'b',
                            'ephemeral1': p + 'd', 'volume0': p + 'c',
                            'volume1': p + 'z', 'config_drive': p + 'y'}
    assert sorted(bf.target_devs(node)) == sorted(plan.devices.values())
    assert set(xp(node, 'devices/disk/target/@bus')) == {bus}
    root = '/dev/%sa' % p
    if virt_type in bf.HVM_TYPES:
        assert one(node, 'os/cmdline/text()') == 'root=%s console=ttyS0' % root
    else:
        assert one(node, 'os/root/text()') == root
    assert_valid_and_defined(plan)

    # Without the volume on the third device swap goes there; names taken
    # by block_device_info are skipped.
    node, plan = node_for(conf=conf, flavor={'ephemeral_gb': 1, 'swap': 64},
                          block_device_info=bf.bdi(
                              ephemerals=[bf.ephemeral(1, p + 'c')]))
    assert plan.devices == {'root': p + 'a', 'ephemeral': p + 'b',
                            'ephemeral1': p + 'c', 'swap': p + 'd'}
    assert_valid_and_defined(plan)


# -- no duplicate target devs, ever -------------------------------------------------

VOLUME_MAKERS = {
    'local': bf.local_volume,
    'block': lambda dev: bf.local_volume(dev, '/dev/mapper/vg-%s' % dev),
    'iscsi': bf.iscsi_volume,
    'rbd': bf.rbd_volume,
    'nfs': lambda dev: bf.nfs_volume(dev, name='vol-%s' % dev),
}


@st.composite
def random_requests(draw):
    virt_type = draw(st.sampled_from(bf.VIRT_TYPES), label='virt_type')
    disk_prefix = draw(st.sampled_from([None, 'vd', 'xvd', 'ubd', 'sd', 'hd']),
                       label='disk_prefix')
    prefix = disk_prefix or bf.PREFIX[virt_type]
    root_dev = prefix + draw(st.sampled_from('abc'), label='root letter')
    explicit_root = draw(st.booleans(), label='explicit root_device_name')
    n_eph = draw(st.integers(0, 3), label='bdi ephemerals')
    has_swap = draw(st.booleans(), label='bdi swap')
    volume_kinds = draw(st.lists(st.sampled_from(sorted(VOLUME_MAKERS)), max_size=4),
                        label='volumes')
    # Distinct device names of the guest's prefix (the builder refuses
    # others: they would land on the guest's bus anyway).  Ephemerals and swap never sit on the
    # root device (nth(0) when no root_device_name is given); volumes may (one
    # there makes a volume-backed guest).  Conflicting requests are in
    # test_conflicting_device_names below.
    pool = [prefix + c for c in string.ascii_lowercase]
    root = root_dev if explicit_root else prefix + 'a'
    local_names = draw(st.lists(st.sampled_from([d for d in pool if d != root]),
                                unique=True, min_size=n_eph + has_swap,
                                max_size=n_eph + has_swap), label='local names')
    vol_names = draw(st.lists(st.sampled_from([d for d in pool if d not in local_names]),
                              unique=True, min_size=len(volume_kinds),
                              max_size=len(volume_kinds)), label='volume names')
    nums = draw(st.lists(st.integers(0, 5), unique=True, min_size=n_eph,
                         max_size=n_eph), label='ephemeral nums')
    bdi = bf.bdi(
        root_device_name='/dev/' + root_dev if explicit_root else None,
        ephemerals=[bf.ephemeral(n, d) for n, d in zip(nums, local_names)],
        swap=bf.swap(local_names[-1]) if has_swap else None,
        volumes=[VOLUME_MAKERS[k](d) for k, d in zip(volume_kinds, vol_names)])
    overrides = {'libvirt.disk_prefix': disk_prefix,
                 'force_config_drive': draw(st.booleans(), label='force_config_drive')}
    request = dict(
        flavor={'ephemeral_gb': draw(st.integers(0, 2), label='ephemeral_gb'),
                'swap': draw(st.sampled_from([0, 64]), label='flavor swap')},
        block_device_info=draw(st.sampled_from([None, bdi]), label='bdi or none'),
        config_drive=draw(st.booleans(), label='config_drive'),
        rescue=draw(st.booleans(), label='rescue'),
        disk_format=draw(st.sampled_from(['qcow2', 'raw', 'iso']), label='disk_format'),
        kernel_id=draw(st.sampled_from([None, 'k1']), label='kernel'),
        rescue_image_meta=draw(st.sampled_from(
            [None, {'id': 'r-iso', 'disk_format': 'iso'}]), label='rescue image'))
    return virt_type, overrides, request


@settings(max_examples=60, deadline=None)
@given(random_requests())
def test_no_duplicate_target_devs_ever(case):
    virt_type, overrides, request = case
    conf = bf.make_conf(virt_type, overrides)
    plan = plan_for(conf=conf, **request)
    node = plan.domain.format()
    devs = bf.target_devs(node)
    assert len(devs) == len(set(devs)), (devs, request)
    # Every named device is in the XML (lxc attaches none), and no two names
    # share one, except a volume-backed root (root is then the volume).
    if virt_type != 'lxc':
        assert set(plan.devices.values()) <= set(devs)
        volumes = {dev for key, dev in plan.devices.items() if key.startswith('volume')}
        named = [dev for key, dev in plan.devices.items()
                 if not (key == 'root' and dev in volumes)]
        assert len(named) == len(set(named)), plan.devices
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('disk_prefix,root_name', [('hd', '/dev/hdc')])
def test_iso_cdrom_takes_a_free_ide_name(disk_prefix, root_name):
    """An iso root goes on hda, unless block_device_info maps hda already
    (possible on a guest whose disk prefix is hd)."""
    conf = bf.make_conf('kvm', {'libvirt.disk_prefix': disk_prefix})
    node, plan = node_for(conf=conf, disk_format='iso', flavor={'swap': 64},
                          block_device_info=bf.bdi(root_device_name=root_name,
                                                   volumes=[bf.local_volume('hda')]))
    devs = bf.target_devs(node)
    assert len(devs) == len(set(devs)), devs
    assert plan.devices['root'] == 'hdb'
    cdrom = bf.disk_by_dev(node, 'hdb')
    assert (cdrom.get('device'), one(cdrom, 'source/@file')) == ('cdrom', DIR + '/disk')
    assert one(bf.disk_by_dev(node, 'hda'), 'source/@file') == '/var/lib/volumes/vol-1.img'
    assert_valid_and_defined(plan)


CONFLICTS = {
    'ephemeral-on-root-device': ('kvm', None, bf.bdi(ephemerals=[bf.ephemeral(0, 'vda')])),
    'swap-on-root-device': ('kvm', None, bf.bdi(swap=bf.swap('vda'))),
    'ephemeral-on-root-device-name': ('kvm', None, bf.bdi(
        root_device_name='/dev/vdc', ephemerals=[bf.ephemeral(1, 'vdc')])),
    'ephemeral-and-volume-share-a-name': ('kvm', None, bf.bdi(
        ephemerals=[bf.ephemeral(1, 'vdc')], volumes=[bf.local_volume('vdc')])),
    'two-volumes-share-a-name': ('kvm', None, bf.bdi(
        volumes=[bf.local_volume('vdc'), bf.rbd_volume('vdc')])),
    'ide-name-on-a-scsi-guest': ('kvm', 'sd', bf.bdi(ephemerals=[bf.ephemeral(0, 'hda')])),
}


@pytest.mark.parametrize('case', sorted(CONFLICTS))
def test_conflicting_device_names(case):
    """A request the validator accepts must not become a domain libvirt
    refuses: either validation or the builder rejects it (InvalidRequest
    naming the field), or the builder resolves the conflict."""
    from compute_agent import validation
    virt_type, disk_prefix, bdi = CONFLICTS[case]
    request = bf.make_request(block_device_info=bdi)
    try:
        validation.validate('spawn', {
            'instance': request['instance'], 'image_meta': request['image_meta'],
            'network_info': [], 'block_device_info': bdi})
    except exception.InvalidRequest as e:
        assert e.field.startswith('block_device_info'), e.field
        return
    conf = bf.make_conf(virt_type, {'libvirt.disk_prefix': disk_prefix})
    try:
        plan = bf.build(conf, request)
    except exception.InvalidRequest as e:
        assert e.field.startswith('block_device_info'), e.field
        return
    assert_valid_and_defined(plan)
