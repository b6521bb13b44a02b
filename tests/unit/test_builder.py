"""The guest builder: domain types, boot, rescue and the fixed devices, by XPath.

Each test builds a plan from a request (``builder_fixtures.make_request``)
and a fresh configuration, then reads the formatted XML back with XPath.
Every XML of the matrix at the end also validates against libvirt's
domain.rng and is accepted by libvirt's test driver with its real domain type.
"""

import itertools
import os

import pytest
from lxml import etree

from compute_agent.virt.plan import DiskFile

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf

GiB = 1024 ** 3
DIR = os.path.join(bf.INSTANCES_PATH, bf.INSTANCE_NAME)
one, xp = bf.one, bf.xp
plan_for, node_for = bf.plan_for, bf.node_for
files_by_name, assert_valid_and_defined = bf.files_by_name, bf.assert_valid_and_defined


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
