"""Disk creation with the real qemu-img, mkfs and mkswap on temp files."""

import json
import os
import shutil
import subprocess

import hypothesis
import pytest
from hypothesis import strategies as st
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.virt import disks
from compute_agent.virt.plan import DiskFile

MiB = 1 << 20


@pytest.fixture
def conf(tmp_path):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], default_config_files=[])
    conf.set_override('instances_path', str(tmp_path / 'instances'))
    os.mkdir(tmp_path / 'instances')
    return conf


@pytest.fixture
def inst(conf):
    return disks.instance_dir(conf, 'vm-1', create=True)


def info(path):
    out = subprocess.run(['qemu-img', 'info', '-U', '--output=json', path],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def blkid(path, tag='TYPE'):
    return subprocess.run(['blkid', '-p', '-o', 'value', '-s', tag, path],
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def raw_base(tmp_path):
    path = tmp_path / 'base.raw'
    with open(path, 'wb') as f:
        f.write(b'BOOT' * 256)
        f.truncate(4 * MiB)
    return str(path)


@pytest.fixture
def qcow2_base(tmp_path, raw_base):
    path = str(tmp_path / 'base.qcow2')
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw_base, path],
                   check=True)
    return path


def no_temp_files(directory):
    return not [n for n in os.listdir(directory) if n.startswith('.')]


def test_instance_dir(conf, tmp_path):
    path = disks.instance_dir(conf, 'vm-1', create=True)
    assert path == str(tmp_path / 'instances' / 'vm-1')
    assert oct(os.stat(path).st_mode & 0o777) == '0o755'
    assert disks.instance_dir(conf, 'vm-1', create=True) == path   # idempotent


BAD_NAMES = ['../x', '..', '.', 'a/b', '', '_base', '-x', '.hidden', 'a' * 64,
             'x\n', '/abs', 'a\0b', '../../etc', 'a b', None, 5, 'vm/..']


@pytest.mark.parametrize('name', BAD_NAMES)
def test_instance_dir_rejects(conf, tmp_path, name):
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(exception.InvalidRequest) as ei:
        disks.instance_dir(conf, name, create=True)
    assert ei.value.field == 'instance.name'
    assert sorted(os.listdir(tmp_path)) == before
    assert os.listdir(tmp_path / 'instances') == []


def test_instance_dir_symlink_out(conf, tmp_path):
    (tmp_path / 'outside').mkdir()
    os.symlink(tmp_path / 'outside', tmp_path / 'instances' / 'evil')
    with pytest.raises(exception.InvalidRequest):
        disks.instance_dir(conf, 'evil', create=True)


def test_safe_join(tmp_path, inst):
    assert disks.safe_join(inst, 'disk') == os.path.join(inst, 'disk')
    os.symlink('/etc/passwd', os.path.join(inst, 'link'))
    for bad in ['', '.', '..', 'a/b', '../disk', 'x\0', 'link', None]:
        with pytest.raises(exception.InvalidRequest):
            disks.safe_join(inst, bad)


@pytest.mark.parametrize('base_fmt', ['raw', 'qcow2'])
def test_overlay(conf, inst, raw_base, qcow2_base, base_fmt):
    base = raw_base if base_fmt == 'raw' else qcow2_base
    path = disks.create_disk(conf, inst, DiskFile('disk', 'root', fmt='qcow2'), base)
    i = info(path)
    assert i['format'] == 'qcow2'
    assert i['backing-filename'] == os.path.abspath(base)
    assert i['backing-filename-format'] == base_fmt
    assert i['virtual-size'] == 4 * MiB
    assert oct(os.stat(path).st_mode & 0o777) == '0o644'
    assert no_temp_files(inst)


def test_overlay_grows_never_shrinks(conf, inst, raw_base):
    big = disks.create_disk(conf, inst, DiskFile('big', 'root', 'qcow2', 64 * MiB), raw_base)
    small = disks.create_disk(conf, inst, DiskFile('small', 'root', 'qcow2', MiB), raw_base)
    assert info(big)['virtual-size'] == 64 * MiB
    assert info(small)['virtual-size'] == 4 * MiB


@pytest.mark.parametrize('size, expect', [(0, 4 * MiB), (MiB, 4 * MiB), (32 * MiB, 32 * MiB)])
def test_raw_copy(conf, inst, qcow2_base, size, expect):
    path = disks.create_disk(conf, inst, DiskFile('disk', 'rescue', 'raw', size), qcow2_base)
    assert info(path)['format'] == 'raw'
    assert os.path.getsize(path) == expect
    with open(path, 'rb') as f:
        assert f.read(1024) == b'BOOT' * 256
    assert no_temp_files(inst)


def test_base_with_backing_file_refused(conf, inst, tmp_path, raw_base):
    evil = str(tmp_path / 'evil.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', raw_base,
                    '-F', 'raw', evil], check=True)
    with pytest.raises(disks.DiskCreateError, match='backing'):
        disks.create_disk(conf, inst, DiskFile('disk', 'root', 'qcow2'), evil)
    assert os.listdir(inst) == []


def test_declared_format_must_match(conf, inst, raw_base):
    with pytest.raises(disks.DiskCreateError, match='declared qcow2 but is raw'):
        disks.create_disk(conf, inst, DiskFile('disk', 'root', 'qcow2'), raw_base,
                          disk_format='qcow2')
    disks.create_disk(conf, inst, DiskFile('disk', 'root', 'qcow2'), raw_base,
                      disk_format='ami')


def test_missing_base_is_a_clear_error(conf, inst, tmp_path):
    with pytest.raises(disks.DiskCreateError) as ei:
        disks.create_disk(conf, inst, DiskFile('disk', 'root', 'qcow2'),
                          str(tmp_path / 'nope'))
    assert 'No such file' in str(ei.value) and 'nope' in str(ei.value)
    assert os.listdir(inst) == []


def test_base_inspected_once_per_file_version(conf, inst, tmp_path, raw_base,
                                              monkeypatch):
    runs = []
    real = disks.qemu_img_info
    monkeypatch.setattr(disks, 'qemu_img_info', lambda p: runs.append(p) or real(p))
    for name in ('a', 'b'):
        disks.create_disk(conf, inst, DiskFile(name, 'root', 'qcow2'), raw_base)
    assert runs == [raw_base]
    # A base replaced under the same name (new inode) is inspected afresh:
    # an image that gained a backing file is still refused.
    evil = str(tmp_path / 'evil.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', '/etc/passwd',
                    '-F', 'raw', evil], check=True)
    os.replace(evil, raw_base)
    with pytest.raises(disks.DiskCreateError, match='backing'):
        disks.create_disk(conf, inst, DiskFile('c', 'root', 'qcow2'), raw_base)
    assert runs == [raw_base, raw_base]


def test_blank_ephemeral(conf, inst):
    path = disks.create_disk(conf, inst, DiskFile('disk.local', 'ephemeral',
                                                  size_bytes=64 * MiB))
    st_ = os.stat(path)
    assert st_.st_size == 64 * MiB and st_.st_blocks == 0     # sparse
    assert blkid(path) == ''


@pytest.mark.parametrize('fs', ['ext4', 'ext3', 'vfat'])
def test_formatted_ephemeral(conf, inst, fs):
    if not shutil.which(f'mkfs.{fs}'):
        if os.environ.get('CI'):    # tools/install-system-packages.sh has it
            pytest.fail(f'mkfs.{fs} not installed (CI is set: not skipping)')
        pytest.skip(f'mkfs.{fs} not installed')
    conf.set_override('default_ephemeral_format', fs)
    path = disks.create_disk(conf, inst, DiskFile('disk.eph0', 'ephemeral',
                                                  size_bytes=64 * MiB))
    assert blkid(path) == fs
    assert blkid(path, 'LABEL').lower() == 'ephemeral0'
    assert no_temp_files(inst)


def test_swap(conf, inst):
    path = disks.create_disk(conf, inst, DiskFile('disk.swap', 'swap', size_bytes=8 * MiB))
    assert blkid(path) == 'swap'
    assert os.path.getsize(path) == 8 * MiB


def flattened(path, tmp_path):
    """What a guest sees on a qcow2 disk: its content as a raw file."""
    out = str(tmp_path / (os.path.basename(path) + '.flat'))
    subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', path, out],
                   check=True)
    return out


def test_qcow2_swap(conf, inst, tmp_path):
    """use_cow_images: an overlay on a cached swap base (nova's Qcow2
    backend), still a usable swap disk for the guest."""
    path = disks.create_disk(conf, inst, DiskFile('disk.swap', 'swap', 'qcow2', 8 * MiB))
    meta = info(path)
    assert meta['format'] == 'qcow2' and meta['virtual-size'] == 8 * MiB
    base = os.path.join(conf.instances_path, '_base', 'swap_%d' % (8 * MiB))
    assert meta['backing-filename'] == base
    assert meta['backing-filename-format'] == 'raw'
    assert blkid(base) == 'swap'
    assert blkid(flattened(path, tmp_path)) == 'swap'
    assert os.stat(path).st_size < MiB      # the overlay holds no data
    assert no_temp_files(inst)


@pytest.mark.parametrize('fs', [None, 'ext4'])
def test_qcow2_ephemeral_shares_one_formatted_base(conf, tmp_path, fs):
    """Ephemeral overlays of one size share a blank base, formatted once
    per default_ephemeral_format."""
    if fs and not shutil.which(f'mkfs.{fs}'):
        if os.environ.get('CI'):
            pytest.fail(f'mkfs.{fs} not installed (CI is set: not skipping)')
        pytest.skip(f'mkfs.{fs} not installed')
    conf.set_override('default_ephemeral_format', fs)
    first = disks.create_disk(conf, disks.instance_dir(conf, 'vm-a', create=True),
                              DiskFile('disk.local', 'ephemeral', 'qcow2', 32 * MiB))
    base = info(first)['backing-filename']
    assert base == os.path.join(conf.instances_path, '_base', 'ephemeral_%d%s' % (
        32 * MiB, '_' + fs if fs else ''))
    made = os.stat(base)
    second = disks.create_disk(conf, disks.instance_dir(conf, 'vm-b', create=True),
                               DiskFile('disk.eph0', 'ephemeral', 'qcow2', 32 * MiB))
    assert info(second)['backing-filename'] == base
    again = os.stat(base)
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    for path in (first, second):
        assert info(path)['virtual-size'] == 32 * MiB
        assert blkid(flattened(path, tmp_path)) == (fs or '')
    if fs:
        assert blkid(base, 'LABEL').lower() == 'ephemeral0'
    # Another size gets its own base; raw disks need none.
    third = disks.create_disk(conf, disks.instance_dir(conf, 'vm-a'),
                              DiskFile('disk.eph1', 'ephemeral', 'qcow2', 16 * MiB))
    assert info(third)['backing-filename'] != base
    disks.create_disk(conf, disks.instance_dir(conf, 'vm-a'),
                      DiskFile('disk.eph2', 'ephemeral', 'raw', 8 * MiB))
    assert len(os.listdir(os.path.join(conf.instances_path, '_base'))) == 2


def test_stale_temps_of_the_named_files_only_are_removed(inst):
    """What a killed attempt was writing (``.<name>.*.part``) goes; temps of
    other files, and the files themselves, stay."""
    names = ['disk', '.disk.x1.part', '.disk.local.x2.part', '.disk.config.x3.part',
             '.disk.rebuild.x4.part', 'snapshot-x5.part', '.diskette.x6.part',
             '.disk.x7.part.keep']
    for name in names:
        with open(os.path.join(inst, name), 'w') as f:
            f.write('x')
    disks.remove_stale_temps(inst, ['disk', 'disk.local'])
    assert sorted(os.listdir(inst)) == sorted(
        ['disk', '.disk.config.x3.part', '.disk.rebuild.x4.part', 'snapshot-x5.part',
         '.diskette.x6.part', '.disk.x7.part.keep'])


def test_blank_needs_size(conf, inst):
    with pytest.raises(disks.DiskCreateError):
        disks.create_disk(conf, inst, DiskFile('disk.swap', 'swap'))


@pytest.mark.parametrize('kind', ['kernel', 'ramdisk', 'kernel.rescue', 'iso'])
def test_copies_are_links_on_same_fs(conf, inst, raw_base, kind):
    path = disks.create_disk(conf, inst, DiskFile(kind, kind), raw_base)
    assert os.stat(path).st_ino == os.stat(raw_base).st_ino
    assert no_temp_files(inst)


def test_copy_across_file_systems(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(18, 'Invalid cross-device link')
    monkeypatch.setattr(os, 'link', no_link)
    (tmp_path / 'src').write_bytes(b'kernel')
    path = disks.link_or_copy(str(tmp_path / 'src'), str(tmp_path / 'dst'))
    assert open(path, 'rb').read() == b'kernel'
    assert os.stat(path).st_ino != os.stat(tmp_path / 'src').st_ino


def test_bad_kinds(conf, inst):
    with pytest.raises(disks.DiskCreateError):
        disks.create_disk(conf, inst, DiskFile('disk.config', 'config'))  # see configdrive
    with pytest.raises(disks.DiskCreateError, match='needs an image'):
        disks.create_disk(conf, inst, DiskFile('disk', 'root', 'qcow2'))
    with pytest.raises(exception.InvalidRequest):
        disks.create_disk(conf, inst, DiskFile('../disk', 'swap', size_bytes=MiB))
    assert os.listdir(inst) == []


@hypothesis.settings(max_examples=500, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(name=st.text(max_size=70) | st.text(alphabet='./a_-', max_size=8))
def test_names_never_escape(conf, tmp_path, name):
    root = os.path.realpath(conf.instances_path)
    try:
        path = disks.instance_dir(conf, name)
    except exception.InvalidRequest:
        return
    assert os.path.dirname(os.path.realpath(path)) == root
    assert os.path.basename(path) not in ('_base', '.', '..')


@hypothesis.settings(max_examples=500, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(name=st.text(max_size=30) | st.text(alphabet='./a', max_size=6))
def test_file_names_never_escape(inst, name):
    try:
        path = disks.safe_join(inst, name)
    except exception.InvalidRequest:
        return
    assert os.path.dirname(os.path.realpath(path)) == os.path.realpath(inst)


def test_qemu_img_info_runs_under_cpu_and_memory_limits(tmp_path, monkeypatch):
    """CVE-2015-5162: ``qemu-img info`` on a downloaded image runs under
    prlimit. With the real limits it works; with an address space too small
    to load qemu-img at all it fails, which shows the limit is applied."""
    from oslo_concurrency import processutils
    image = str(tmp_path / 'img.qcow2')
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', image, '1M'],
                   check=True)
    assert disks.QEMU_IMG_INFO_LIMITS.cpu_time == 30
    assert disks.QEMU_IMG_INFO_LIMITS.address_space == 1 << 30
    assert disks.qemu_img_info(image)['format'] == 'qcow2'
    monkeypatch.setattr(disks, 'QEMU_IMG_INFO_LIMITS',
                        processutils.ProcessLimits(address_space=8 << 20))
    with pytest.raises(disks.DiskCreateError) as info:
        disks.qemu_img_info(image)
    assert 'qemu-img info exited' in str(info.value)
