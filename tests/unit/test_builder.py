"""The guest builder (compute_agent.virt.builder): every branch, by XPath.

Each test builds a plan from a request (``builder_fixtures.make_request``)
and a fresh configuration, then reads the formatted XML back with XPath.
Every XML of the matrix at the end also validates against libvirt's
domain.rng and is accepted by libvirt's test driver with its real domain type.
"""

import hashlib
import itertools
import os
import string

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from lxml import etree

from compute_agent import exception
from compute_agent.virt import schema
from compute_agent.virt.plan import DiskFile

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf

GiB = 1024 ** 3
MiB = 1024 ** 2
DIR = os.path.join(bf.INSTANCES_PATH, bf.INSTANCE_NAME)
one, xp = bf.one, bf.xp


def plan_for(virt_type='kvm', conf=None, **request):
    conf = conf or bf.make_conf(virt_type)
    return bf.build(conf, bf.make_request(**request))


def node_for(virt_type='kvm', conf=None, **request):
    plan = plan_for(virt_type, conf, **request)
    return bf.xml_of(plan), plan


def files_by_name(plan):
    return {f.name: f for f in plan.files}


def assert_valid_and_defined(plan):
    node = plan.domain.format()
    schema.validate_domain(node)
    devs = bf.target_devs(node)
    assert len(devs) == len(set(devs)), 'duplicate target devs %s' % devs
    dumped = etree.fromstring(bf.define_and_undefine(plan.domain.to_xml()))
    assert dumped.get('type') == plan.domain.type
    assert sorted(bf.target_devs(dumped)) == sorted(devs)


# -- lxc ------------------------------------------------------------------------

@pytest.mark.parametrize('rescue', [False, True])
@pytest.mark.parametrize('kernel', [None, 'kernel-1'])
def test_lxc(rescue, kernel):
    node, plan = node_for(
        'lxc', kernel_id=kernel, ramdisk_id=kernel and 'ramdisk-1', rescue=rescue,
        flavor={'ephemeral_gb': 1, 'swap': 64},
        block_device_info=bf.bdi(volumes=[bf.local_volume('sdc')]))
    assert node.get('type') == 'lxc'
    assert one(node, 'os/type/text()') == 'exe'
    assert one(node, 'os/init/text()') == '/sbin/init'
    assert xp(node, 'os/cmdline') == []
    assert xp(node, 'os/kernel | os/initrd | os/root | os/boot') == []
    fs = one(node, 'devices/filesystem')
    assert fs.get('type') == 'mount'
    assert one(fs, 'source/@dir') == DIR + '/rootfs'
    assert one(fs, 'target/@dir') == '/'
    assert xp(node, 'devices/disk') == []
    assert one(node, 'devices/console/@type') == 'pty'
    assert xp(node, 'devices/serial') == []
    assert xp(node, 'features') == [] and xp(node, '//acpi') == []
    assert xp(node, 'devices/graphics | devices/input') == []
    assert xp(node, 'cpu | sysinfo | clock | devices/memballoon | devices/rng') == []
    assert plan.devices == {}
    # A rescue reuses the instance's root file system: nothing to create.
    assert [(f.name, f.kind) for f in plan.files] == (
        [] if rescue else [('disk', 'root')])
    assert_valid_and_defined(plan)


def test_lxc_config_drive_is_made_but_not_attached():
    node, plan = node_for('lxc', config_drive=True)
    assert xp(node, 'devices/disk') == []
    assert 'config_drive' not in plan.devices
    assert files_by_name(plan)['disk.config'].kind == 'config'


# -- uml ------------------------------------------------------------------------

@pytest.mark.parametrize('rescue', [False, True])
def test_uml(rescue):
    node, plan = node_for('uml', rescue=rescue, kernel_id='kernel-1',
                          flavor={'ephemeral_gb': 1, 'swap': 64}, config_drive=True)
    assert node.get('type') == 'uml'
    assert one(node, 'os/type/text()') == 'uml'
    assert one(node, 'os/kernel/text()') == '/usr/bin/linux'
    assert one(node, 'os/root/text()') == '/dev/ubda'
    assert xp(node, 'os/cmdline | os/initrd | os/boot | os/init') == []
    disks = xp(node, 'devices/disk')
    assert disks
    for disk in disks:
        assert one(disk, 'target/@bus') == 'uml'
        assert one(disk, 'target/@dev').startswith('ubd')
        assert xp(disk, 'driver') == [], etree.tostring(disk)
    assert one(node, 'devices/console/@type') == 'pty'
    assert xp(node, 'devices/serial | devices/graphics | devices/input') == []
    assert xp(node, 'features | cpu | sysinfo | clock') == []
    assert not any(f.kind.startswith('kernel') for f in plan.files)
    assert_valid_and_defined(plan)


def test_uml_root_device_name_from_block_device_info():
    node, plan = node_for('uml', block_device_info=bf.bdi(root_device_name='/dev/ubdb'))
    assert one(node, 'os/root/text()') == '/dev/ubdb'
    assert one(bf.disk_by_dev(node, 'ubdb'), 'source/@file') == DIR + '/disk'
    assert plan.devices['root'] == 'ubdb'
    assert_valid_and_defined(plan)


def test_uml_volumes_take_no_driver_element():
    """The UML driver takes no <driver>: also not on volumes."""
    node, plan = node_for('uml', block_device_info=bf.bdi(volumes=[
        bf.local_volume('ubdc'), bf.nfs_volume('ubdd')]))
    for dev in ('ubdc', 'ubdd'):
        assert xp(bf.disk_by_dev(node, dev), 'driver') == []


# -- xen ------------------------------------------------------------------------

@pytest.mark.parametrize('kernel', [None, 'kernel-1'], ids=['disk-boot', 'kernel-boot'])
@pytest.mark.parametrize('rescue', [False, True])
def test_xen(kernel, rescue):
    node, plan = node_for('xen', kernel_id=kernel, ramdisk_id=kernel and 'ramdisk-1',
                          rescue=rescue)
    assert node.get('type') == 'xen'
    assert one(node, 'os/type/text()') == 'linux'
    assert one(node, 'os/root/text()') == '/dev/xvda'
    assert xp(node, 'os/boot') == []
    suffix = '.rescue' if rescue else ''
    if kernel:
        assert one(node, 'os/kernel/text()') == DIR + '/kernel' + suffix
        assert one(node, 'os/initrd/text()') == DIR + '/ramdisk' + suffix
        assert one(node, 'os/cmdline/text()') == 'ro'
    else:
        assert xp(node, 'os/kernel | os/initrd | os/cmdline') == []
    for disk in xp(node, 'devices/disk'):
        assert one(disk, 'target/@bus') == 'xen'
        assert one(disk, 'target/@dev').startswith('xvd')
    assert one(node, 'devices/console/@type') == 'pty'
    assert xp(node, 'devices/serial') == []
    assert one(node, 'devices/graphics/@type') == 'vnc'
    assert xp(node, 'devices/input') == []          # no usb tablet on Xen PV
    assert one(node, 'clock/@offset') == 'utc'
    assert xp(node, 'features | cpu | sysinfo | devices/memballoon') == []
    assert_valid_and_defined(plan)


# -- kvm / qemu -----------------------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.HVM_TYPES)
def test_hvm_disk_boot(virt_type):
    node, plan = node_for(virt_type)
    assert node.get('type') == virt_type
    assert one(node, 'os/type/text()') == 'hvm'
    assert [b.get('dev') for b in xp(node, 'os/boot')] == ['hd']
    assert xp(node, 'os/kernel | os/initrd | os/cmdline | os/root') == []
    assert xp(node, 'features/acpi') and xp(node, 'features/apic')
    root = bf.disk_by_dev(node, 'vda')
    assert one(root, 'target/@bus') == 'virtio'
    assert one(root, 'source/@file') == DIR + '/disk'
    serials = xp(node, 'devices/serial')
    assert [s.get('type') for s in serials] == ['pty']
    assert one(serials[0], 'log/@file') == DIR + '/console.log'
    assert one(serials[0], 'log/@append') == 'on'
    assert xp(node, 'devices/console') == []
    assert plan.instance_dir == DIR
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('virt_type', bf.HVM_TYPES)
def test_hvm_kernel_boot(virt_type):
    node, plan = node_for(virt_type, kernel_id='kernel-1', ramdisk_id='ramdisk-1')
    assert one(node, 'os/kernel/text()') == DIR + '/kernel'
    assert one(node, 'os/initrd/text()') == DIR + '/ramdisk'
    assert one(node, 'os/cmdline/text()') == 'root=/dev/vda console=ttyS0'
    assert xp(node, 'os/boot') == []
    files = files_by_name(plan)
    assert files['kernel'] == DiskFile('kernel', 'kernel', image_id='kernel-1')
    assert files['ramdisk'] == DiskFile('ramdisk', 'ramdisk', image_id='ramdisk-1')
    assert_valid_and_defined(plan)


def test_kernel_without_ramdisk():
    node, plan = node_for('kvm', kernel_id='kernel-1')
    assert one(node, 'os/kernel/text()') == DIR + '/kernel'
    assert xp(node, 'os/initrd') == []
    assert 'ramdisk' not in files_by_name(plan)


def test_kernel_cmdline_follows_root_device_name():
    node, plan = node_for('kvm', kernel_id='k', block_device_info=bf.bdi(
        root_device_name='/dev/vdb'))
    assert one(node, 'os/cmdline/text()') == 'root=/dev/vdb console=ttyS0'
    assert one(bf.disk_by_dev(node, 'vdb'), 'source/@file') == DIR + '/disk'


# -- rescue -----------------------------------------------------------------------

@pytest.mark.parametrize('virt_type,prefix', [('kvm', 'vd'), ('qemu', 'vd'),
                                              ('xen', 'xvd'), ('uml', 'ubd')])
def test_rescue_disks(virt_type, prefix):
    node, plan = node_for(virt_type, rescue=True, config_drive=True,
                          flavor={'ephemeral_gb': 1, 'swap': 64},
                          block_device_info=bf.bdi(
                              ephemerals=[bf.ephemeral(1, prefix + 'd')],
                              swap=bf.swap(prefix + 'e'),
                              volumes=[bf.local_volume(prefix + 'f')]))
    disks = xp(node, 'devices/disk')
    # Volumes stay attached, after the rescue disk and the root (docs: protocol-methods-1-1).
    assert [one(d, 'source/@file') for d in disks] == [
        DIR + '/disk.rescue', DIR + '/disk', '/var/lib/volumes/vol-1.img',
        DIR + '/disk.config.rescue']
    assert [one(d, 'target/@dev') for d in disks] == [
        prefix + 'a', prefix + 'b', prefix + 'c', prefix + 'z']
    assert plan.devices == {'rescue': prefix + 'a', 'root': prefix + 'b',
                            'volume0': prefix + 'c', 'config_drive': prefix + 'z'}
    rescue_file = files_by_name(plan)['disk.rescue']
    assert rescue_file.kind == 'rescue'
    assert rescue_file.image_id == bf.IMAGE_ID
    assert rescue_file.fmt == 'qcow2'
    assert rescue_file.size_bytes == 1 * GiB
    # The instance's own disk is attached, not created again; the rescue's
    # files carry their final names (what reaches libvirt is this XML).
    assert 'disk' not in files_by_name(plan)
    assert sorted(files_by_name(plan)) == ['disk.config.rescue', 'disk.rescue']
    assert files_by_name(plan)['disk.config.rescue'].kind == 'config'
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('rescue_meta,conf_image,expected', [
    ({'id': 'rescue-meta-img', 'disk_format': 'qcow2'}, 'conf-img', 'rescue-meta-img'),
    (None, 'conf-img', 'conf-img'),
    (None, None, bf.IMAGE_ID),
], ids=['rescue_image_meta', 'conf-rescue_image_id', 'image_ref'])
def test_rescue_image_choice(rescue_meta, conf_image, expected):
    conf = bf.make_conf('kvm', {'libvirt.rescue_image_id': conf_image})
    plan = plan_for(conf=conf, rescue=True, rescue_image_meta=rescue_meta)
    assert files_by_name(plan)['disk.rescue'] == DiskFile(
        'disk.rescue', 'rescue', fmt='qcow2', size_bytes=GiB, image_id=expected)


@pytest.mark.parametrize('virt_type', ['kvm', 'qemu', 'xen'])
@pytest.mark.parametrize('inst_kernel,conf_kernel,conf_ramdisk', [
    ('k-inst', None, None), (None, 'k-conf', 'r-conf'), ('k-inst', 'k-conf', None),
    (None, None, None)])
def test_rescue_kernel(virt_type, inst_kernel, conf_kernel, conf_ramdisk):
    conf = bf.make_conf(virt_type, {'libvirt.rescue_kernel_id': conf_kernel,
                                    'libvirt.rescue_ramdisk_id': conf_ramdisk})
    node, plan = node_for(conf=conf, rescue=True, kernel_id=inst_kernel,
                          ramdisk_id=inst_kernel and 'r-inst')
    files = files_by_name(plan)
    kernel = conf_kernel or inst_kernel
    ramdisk = conf_ramdisk or (inst_kernel and 'r-inst')
    assert 'kernel' not in files and 'ramdisk' not in files
    if kernel:
        assert one(node, 'os/kernel/text()') == DIR + '/kernel.rescue'
        assert files['kernel.rescue'] == DiskFile('kernel.rescue', 'kernel.rescue',
                                                  image_id=kernel)
        cmdline = 'ro' if virt_type == 'xen' else 'root=/dev/vda console=ttyS0'
        assert one(node, 'os/cmdline/text()') == cmdline
        assert xp(node, 'os/boot') == []
    else:
        assert xp(node, 'os/kernel | os/cmdline') == []
        assert 'kernel.rescue' not in files
    if kernel and ramdisk:
        assert one(node, 'os/initrd/text()') == DIR + '/ramdisk.rescue'
        assert files['ramdisk.rescue'].image_id == ramdisk
        assert files['ramdisk.rescue'].kind == 'ramdisk.rescue'
    else:
        assert xp(node, 'os/initrd') == []
    assert_valid_and_defined(plan)


def test_rescue_kernel_cmdline_roots_on_the_rescue_disk():
    """In rescue the guest boots disk.rescue (vda), whatever the instance's
    own root_device_name says."""
    node, plan = node_for('kvm', rescue=True, kernel_id='k', block_device_info=bf.bdi(
        root_device_name='/dev/vdc'))
    assert plan.devices['rescue'] == 'vda'
    assert one(node, 'os/cmdline/text()') == 'root=/dev/vda console=ttyS0'


def test_rescue_from_iso():
    node, plan = node_for('kvm', rescue=True,
                          rescue_image_meta={'id': 'rescue-iso', 'disk_format': 'iso'})
    rescue = bf.disk_by_dev(node, 'hda')
    assert (rescue.get('device'), one(rescue, 'target/@bus')) == ('cdrom', 'ide')
    assert xp(rescue, 'readonly')
    assert one(rescue, 'source/@file') == DIR + '/disk.rescue'
    assert one(bf.disk_by_dev(node, 'vdb'), 'source/@file') == DIR + '/disk'
    assert [b.get('dev') for b in xp(node, 'os/boot')] == ['cdrom', 'hd']
    assert files_by_name(plan)['disk.rescue'] == DiskFile('disk.rescue', 'iso',
                                                          image_id='rescue-iso')
    assert_valid_and_defined(plan)


def test_rescue_of_an_iso_instance():
    node, plan = node_for('kvm', rescue=True, disk_format='iso')
    assert one(bf.disk_by_dev(node, 'vda'), 'source/@file') == DIR + '/disk.rescue'
    root = bf.disk_by_dev(node, 'hdb')
    assert (root.get('device'), one(root, 'target/@bus')) == ('cdrom', 'ide')
    assert one(root, 'source/@file') == DIR + '/disk'
    assert plan.devices == {'rescue': 'vda', 'root': 'hdb'}
    assert [b.get('dev') for b in xp(node, 'os/boot')] == ['hd']
    assert_valid_and_defined(plan)


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


# -- VIFs -------------------------------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
def test_vifs(virt_type):
    conf = bf.make_conf(virt_type, {'ovs.integration_bridge': 'br-test'})
    node, plan = node_for(conf=conf, network_info=bf.all_vifs())
    bridge, ovs, eth = xp(node, 'devices/interface')
    model = ['virtio'] if virt_type in bf.HVM_TYPES else []

    assert bridge.get('type') == 'bridge'
    assert one(bridge, 'mac/@address') == 'fa:16:3e:00:00:01'
    assert one(bridge, 'source/@bridge') == 'br100'
    assert one(bridge, 'target/@dev') == 'tapbr1'
    assert one(bridge, 'mtu/@size') == '1500'
    assert xp(bridge, 'model/@type') == model
    assert xp(bridge, 'virtualport') == []

    assert ovs.get('type') == 'bridge'
    assert one(ovs, 'mac/@address') == 'fa:16:3e:00:00:02'
    assert one(ovs, 'source/@bridge') == 'br-test'
    assert one(ovs, 'virtualport/@type') == 'openvswitch'
    assert one(ovs, 'virtualport/parameters/@interfaceid') == bf.VIF_IDS[1]
    assert one(ovs, 'target/@dev') == ('tap' + bf.VIF_IDS[1])[:14]
    assert one(ovs, 'mtu/@size') == '1450'
    assert xp(ovs, 'model/@type') == model

    assert eth.get('type') == 'ethernet'
    assert one(eth, 'mac/@address') == 'fa:16:3e:00:00:03'
    assert one(eth, 'target/@dev') == 'tapeth3'
    assert one(eth, 'target/@managed') == 'no'
    assert xp(eth, 'source | virtualport | mtu') == []
    assert xp(eth, 'model/@type') == model
    assert_valid_and_defined(plan)


def test_no_network_info_needs_no_vif_drivers():
    from compute_agent.virt import builder
    conf = bf.make_conf('kvm')
    plan = builder.build(conf, **bf.make_request())
    assert bf.xml_of(plan).xpath('devices/interface') == []


@pytest.mark.parametrize('position', [0, 2])
def test_unknown_vif_type_is_an_invalid_request(position):
    vifs = bf.all_vifs()
    vifs[position]['type'] = 'no_such_vif_type'
    with pytest.raises(exception.InvalidRequest) as err:
        plan_for('kvm', network_info=vifs)
    assert err.value.field == 'network_info[%d].type' % position
    assert err.value.reason == 'unknown VIF type (installed: bridge, ethernet, ovs)'


# -- VNC / input --------------------------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('vnc', [True, False], ids=['vnc', 'no-vnc'])
@pytest.mark.parametrize('tablet', [True, False], ids=['tablet', 'no-tablet'])
def test_graphics(virt_type, vnc, tablet):
    conf = bf.make_conf(virt_type, {'vnc.enabled': vnc, 'vnc.keymap': 'de',
                                    'vnc.server_listen': '0.0.0.0',
                                    'libvirt.use_usb_tablet': tablet})
    node, plan = node_for(conf=conf)
    graphical = vnc and virt_type not in ('lxc', 'uml')
    if graphical:
        g = one(node, 'devices/graphics')
        assert (g.get('type'), g.get('autoport')) == ('vnc', 'yes')
        assert (g.get('keymap'), g.get('listen')) == ('de', '0.0.0.0')
        assert xp(g, '@port') == []
    else:
        assert xp(node, 'devices/graphics') == []
    if graphical and tablet and virt_type in bf.HVM_TYPES:
        assert [(i.get('type'), i.get('bus')) for i in xp(node, 'devices/input')] == [
            ('tablet', 'usb')]
    else:
        assert xp(node, 'devices/input') == []
    assert_valid_and_defined(plan)


def test_vnc_defaults():
    node, _ = node_for('kvm')
    g = one(node, 'devices/graphics')
    assert (g.get('keymap'), g.get('listen')) == ('en-us', '127.0.0.1')


# -- modern options ----------------------------------------------------------------

@pytest.mark.parametrize('virt_type,mode,model,expected', [
    ('kvm', None, None, {'mode': 'host-model'}),
    ('qemu', None, None, None),
    ('kvm', 'host-passthrough', None, {'mode': 'host-passthrough'}),
    ('qemu', 'host-model', None, {'mode': 'host-model'}),
    ('kvm', 'custom', 'Haswell', {'mode': 'custom', 'match': 'exact'}),
    ('qemu', 'custom', 'qemu64', {'mode': 'custom', 'match': 'exact'}),
    ('kvm', 'none', None, None),
])
def test_cpu_mode(virt_type, mode, model, expected):
    conf = bf.make_conf(virt_type, {'libvirt.cpu_mode': mode, 'libvirt.cpu_model': model})
    node, plan = node_for(conf=conf)
    if expected is None:
        assert xp(node, 'cpu') == []
    else:
        cpu = one(node, 'cpu')
        assert dict(cpu.attrib) == expected
        if model:
            assert one(cpu, 'model/text()') == model
            assert one(cpu, 'model/@fallback') == 'allow'
        else:
            assert xp(cpu, 'model') == []
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('virt_type', ['xen', 'lxc', 'uml'])
def test_no_cpu_element_outside_hvm(virt_type):
    conf = bf.make_conf(virt_type, {'libvirt.cpu_mode': 'host-passthrough'})
    node, _ = node_for(conf=conf)
    assert xp(node, 'cpu | features') == []


@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('serial', [True, False])
def test_sysinfo(virt_type, serial):
    conf = bf.make_conf(virt_type, {'libvirt.sysinfo_serial': serial})
    node, plan = node_for(conf=conf)
    if serial and virt_type in bf.HVM_TYPES:
        assert one(node, 'sysinfo/@type') == 'smbios'
        entries = {e.get('name'): e.text for e in xp(node, 'sysinfo/system/entry')}
        assert entries['serial'] == bf.INSTANCE_UUID
        assert entries['uuid'] == bf.INSTANCE_UUID
        assert one(node, 'os/smbios/@mode') == 'sysinfo'
    else:
        assert xp(node, 'sysinfo | os/smbios') == []
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('offset', ['utc', 'localtime'])
def test_clock_offset(virt_type, offset):
    conf = bf.make_conf(virt_type, {'libvirt.clock_offset': offset})
    node, _ = node_for(conf=conf)
    if virt_type in ('kvm', 'qemu', 'xen'):
        assert one(node, 'clock/@offset') == offset
    else:
        assert xp(node, 'clock') == []


@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('balloon', [True, False])
def test_memballoon(virt_type, balloon):
    conf = bf.make_conf(virt_type, {'libvirt.mem_balloon': balloon})
    node, plan = node_for(conf=conf)
    if virt_type not in bf.HVM_TYPES:
        assert xp(node, 'devices/memballoon') == []
    elif balloon:
        mb = one(node, 'devices/memballoon')
        assert mb.get('model') == 'virtio'
        assert one(mb, 'stats/@period') == '10'
    else:
        mb = one(node, 'devices/memballoon')
        assert mb.get('model') == 'none' and len(mb) == 0
    assert_valid_and_defined(plan)


@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('path', [None, '/dev/urandom', '/dev/hwrng'])
def test_rng(virt_type, path):
    conf = bf.make_conf(virt_type, {'libvirt.rng_dev_path': path})
    node, plan = node_for(conf=conf)
    if path and virt_type in bf.HVM_TYPES:
        rng = one(node, 'devices/rng')
        assert rng.get('model') == 'virtio'
        assert one(rng, 'backend/@model') == 'random'
        assert one(rng, 'backend/text()') == path
    else:
        assert xp(node, 'devices/rng') == []
    assert_valid_and_defined(plan)


def test_basic_domain_fields():
    node, _ = node_for('kvm', flavor={'memory_mb': 2048, 'vcpus': 3})
    assert one(node, 'name/text()') == bf.INSTANCE_NAME
    assert one(node, 'uuid/text()') == bf.INSTANCE_UUID
    assert one(node, 'memory/text()') == str(2048 * 1024)
    assert one(node, 'memory/@unit') == 'KiB'
    assert one(node, 'vcpu/text()') == '3'


# -- the devices dict ---------------------------------------------------------------

def _source(disk):
    return (disk.xpath('source/@file') or disk.xpath('source/@dev')
            or disk.xpath('source/@name'))[0]


DEVICE_FILES = {'root': 'disk', 'ephemeral': 'disk.local', 'swap': 'disk.swap',
                'config_drive': 'disk.config', 'rescue': 'disk.rescue'}


@pytest.mark.parametrize('virt_type', ['kvm', 'qemu', 'xen', 'uml'])
@pytest.mark.parametrize('rescue', [False, True])
def test_devices_dict_matches_the_xml(virt_type, rescue):
    p = bf.PREFIX[virt_type]
    volumes = bf.all_volumes(p)
    request = bf.make_request(
        rescue=rescue, config_drive=True, flavor={'ephemeral_gb': 1, 'swap': 64},
        block_device_info=bf.bdi(ephemerals=[bf.ephemeral(2, p + 'd')], volumes=volumes))
    plan = bf.build(bf.make_conf(virt_type), request)
    node = bf.xml_of(plan)
    if rescue:      # volumes follow the rescue disk and the root
        expected = {'rescue': p + 'a', 'root': p + 'b', 'config_drive': p + 'z'}
        expected.update(('volume%d' % i, p + c) for i, c in enumerate('cdefg'))
    else:
        expected = {'root': p + 'a', 'ephemeral': p + 'b', 'swap': p + 'c',
                    'ephemeral2': p + 'd', 'config_drive': p + 'z'}
        expected.update(('volume%d' % i, p + c) for i, c in enumerate('efghi'))
    assert plan.devices == expected
    assert sorted(bf.target_devs(node)) == sorted(expected.values())
    for key, dev in plan.devices.items():
        source = _source(bf.disk_by_dev(node, dev))
        if key in DEVICE_FILES:
            suffix = '.rescue' if rescue and key == 'config_drive' else ''
            assert source == '%s/%s%s' % (DIR, DEVICE_FILES[key], suffix)
        elif key.startswith('ephemeral'):
            assert source == '%s/disk.eph%s' % (DIR, key[len('ephemeral'):])
        else:
            index = int(key[len('volume'):])
            data = volumes[index]['connection_info']['data']
            assert (source.endswith(data.get('name', '-')) or
                    source == data.get('device_path') or
                    source.startswith(data.get('target_iqn', '-')))
    assert_valid_and_defined(plan)


# -- the whole matrix: schema-valid and accepted by libvirt ---------------------------

MATRIX = list(itertools.product(
    bf.VIRT_TYPES, [False, True], [None, 'kernel-1'], ['qcow2', 'iso'],
    [False, True], [False, True], [False, True], [False, True]))


def _matrix_id(case):
    vt, rescue, kernel, fmt, vifs, vols, cd, vnc = case
    return '-'.join([vt, 'rescue' if rescue else 'spawn', 'kernel' if kernel else 'disk',
                     fmt, 'vifs' if vifs else 'novifs', 'vols' if vols else 'novols',
                     'cd' if cd else 'nocd', 'vnc' if vnc else 'novnc'])


@pytest.mark.parametrize('case', MATRIX, ids=[_matrix_id(c) for c in MATRIX])
def test_matrix_validates_and_defines(case):
    virt_type, rescue, kernel, fmt, vifs, vols, cd, vnc = case
    p = bf.PREFIX[virt_type]
    conf = bf.make_conf(virt_type, {'vnc.enabled': vnc,
                                    'libvirt.rng_dev_path': '/dev/urandom'})
    plan = plan_for(
        conf=conf, rescue=rescue, kernel_id=kernel, ramdisk_id=kernel and 'ramdisk-1',
        disk_format=fmt, config_drive=cd,
        flavor={'ephemeral_gb': 1, 'swap': 64},
        network_info=bf.all_vifs() if vifs else [],
        block_device_info=bf.bdi(ephemerals=[bf.ephemeral(1, p + 'd')],
                                 volumes=bf.all_volumes(p)) if vols else None)
    node = bf.xml_of(plan)
    assert node.get('type') == virt_type
    assert len(xp(node, 'devices/interface')) == (3 if vifs else 0)
    assert bool(xp(node, 'devices/graphics')) == (vnc and virt_type not in ('lxc', 'uml'))
    if virt_type != 'lxc':
        config = 'disk.config.rescue' if rescue else 'disk.config'
        assert bool(xp(node, "devices/disk[source/@file='%s/%s']" % (DIR, config))) == cd
        assert set(plan.devices.values()) == set(bf.target_devs(node))
    assert_valid_and_defined(plan)


# -- purity -----------------------------------------------------------------------

def test_builder_touches_no_files(tmp_path):
    instances = tmp_path / 'instances'
    state = tmp_path / 'state'
    for virt_type in bf.VIRT_TYPES:
        for rescue in (False, True):
            conf = bf.make_conf(virt_type, {'instances_path': str(instances),
                                            'state_path': str(state),
                                            'libvirt.rng_dev_path': '/dev/urandom'})
            p = bf.PREFIX[virt_type]
            plan = plan_for(conf=conf, rescue=rescue, kernel_id='k', ramdisk_id='r',
                            config_drive=True, flavor={'ephemeral_gb': 1, 'swap': 64},
                            network_info=bf.all_vifs(),
                            block_device_info=bf.bdi(
                                ephemerals=[bf.ephemeral(1, p + 'd')],
                                volumes=bf.all_volumes(p)))
            assert plan.instance_dir == str(instances / bf.INSTANCE_NAME)
    assert not instances.exists()
    assert not state.exists()
    assert list(tmp_path.iterdir()) == []
    assert not os.path.exists(bf.INSTANCES_PATH)


# -- guest agent channel (issue 15) ---------------------------------------------------

@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('enabled', [True, False])
def test_guest_agent_channel(virt_type, enabled):
    conf = bf.make_conf(virt_type, {'libvirt.guest_agent': enabled})
    node, plan = node_for(conf=conf)
    channels = xp(node, 'devices/channel')
    if enabled and virt_type in bf.HVM_TYPES:
        assert len(channels) == 1
        assert channels[0].get('type') == 'unix'
        assert one(channels[0], 'target/@type') == 'virtio'
        assert one(channels[0], 'target/@name') == 'org.qemu.guest_agent.0'
        assert xp(channels[0], 'source') == []    # libvirt picks the socket
    else:
        assert channels == []
    assert_valid_and_defined(plan)


def test_guest_agent_channel_is_on_by_default():
    node, _ = node_for('qemu')
    assert one(node, 'devices/channel/target/@name') == 'org.qemu.guest_agent.0'


@pytest.mark.parametrize('rescue', [False, True])
def test_guest_agent_channel_in_rescue_guest(rescue):
    node, plan = node_for('kvm', rescue=rescue)
    assert len(xp(node, 'devices/channel')) == 1
    assert_valid_and_defined(plan)


def test_guest_agent_channel_q35_keeps_spare_ports():
    """The channel's virtio-serial controller takes a root port of its own;
    the spare ports for hot-plug are still all free."""
    base = {'libvirt.hw_machine_type': 'q35', 'libvirt.num_pcie_ports': 2}
    with_ga = node_for(conf=bf.make_conf('kvm', dict(base)))[0]
    without = node_for(conf=bf.make_conf(
        'kvm', dict(base, **{'libvirt.guest_agent': False})))[0]
    idx = [int(i) for i in xp(with_ga, "devices/controller[@model='pcie-root-port']/@index")]
    idx0 = [int(i) for i in xp(without, "devices/controller[@model='pcie-root-port']/@index")]
    assert len(idx) == len(idx0) == 2
    assert min(idx) == min(idx0) + 1
