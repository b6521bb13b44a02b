"""Cold migration's disk channel (virt/coldmigration.py) with the real
qemu-nbd and qemu-img on loopback, and the ``migrate`` arguments.

The channel must copy the guest's whole disk (its backing image included)
and let no one read it without the migration's key.
"""

import shutil
import socket
import subprocess
import types
import uuid as uuidlib

import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent import validation
from compute_agent.virt import coldmigration
from compute_agent.virt import disks

UUID = str(uuidlib.uuid4())
ADDRESS = '127.0.0.1'


def _need(tool):
    if shutil.which(tool) is None:
        pytest.fail('%s is required for this test' % tool)


class _Driver(coldmigration.ColdMigration):
    """Just the directory lookup the channel needs."""

    def __init__(self, inst_dir):
        self.inst_dir = inst_dir

    def _dir(self, instance):
        return str(self.inst_dir)


def _qemu_io(path, cmd, fmt='qcow2'):
    return subprocess.run(['qemu-io', '-f', fmt, '-c', cmd, str(path)],
                          capture_output=True, text=True, check=True).stdout


@pytest.fixture
def source(tmp_path):
    """An instance dir whose qcow2 root disk has a backing file with a
    pattern the overlay does not hold, and a pattern of its own."""
    for tool in ('qemu-nbd', 'qemu-img', 'qemu-io'):
        _need(tool)
    base = tmp_path / 'base.qcow2'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(base), '8M'],
                   check=True)
    _qemu_io(base, 'write -P 0x42 0 64k')
    inst = tmp_path / 'inst'
    inst.mkdir()
    disk = inst / 'disk'
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-b', str(base),
                    '-F', 'qcow2', str(disk)], check=True)
    _qemu_io(disk, 'write -P 0x43 1M 4k')
    plan = types.SimpleNamespace(
        instance={'uuid': UUID, 'name': 'cm-unit'},
        files=[types.SimpleNamespace(kind='root', name='disk', fmt='qcow2'),
               types.SimpleNamespace(kind='root', name='absent', fmt='raw')])
    return _Driver(inst), plan


def _closed(port):
    try:
        socket.create_connection((ADDRESS, port), timeout=1).close()
    except OSError:
        return True
    return False


def test_the_copy_is_whole_and_only_the_key_opens_it(source, tmp_path):
    drv, plan = source
    with drv.export_disks(plan, ADDRESS) as (key, exports):
        # Only files that exist are exported.
        assert [(e['name'], e['fmt']) for e in exports] == [('disk', 'qcow2')]
        port = exports[0]['port']
        # Without TLS and the key: refused.
        plain = subprocess.run(
            ['qemu-img', 'info', 'nbd://%s:%d/%s' % (
                ADDRESS, port, coldmigration.EXPORT_NAME)],
            capture_output=True, text=True)
        assert plain.returncode != 0
        assert 'TLS' in plain.stderr
        # With another key: refused too.
        wrong = coldmigration._psk_dir('00' * 32)
        try:
            with pytest.raises(disks.DiskCreateError):
                drv._fetch(ADDRESS, port, wrong, 'qcow2',
                           str(tmp_path / 'stolen'))
        finally:
            shutil.rmtree(wrong)
        assert not (tmp_path / 'stolen').exists()
        keydir = coldmigration._psk_dir(key)
        try:
            copy = tmp_path / 'copy'
            drv._fetch(ADDRESS, port, keydir, 'qcow2', str(copy))
        finally:
            shutil.rmtree(keydir)
    assert _closed(port), 'the export outlived the migration'
    # The copy stands alone and holds both the backing file's and the
    # overlay's bytes.
    info = subprocess.run(['qemu-img', 'info', '--output=json', str(copy)],
                          capture_output=True, text=True, check=True).stdout
    assert 'backing-filename' not in info
    assert 'pattern verification failed' not in _qemu_io(copy, 'read -P 0x42 0 64k')
    assert 'pattern verification failed' not in _qemu_io(copy, 'read -P 0x43 1M 4k')
    subprocess.run(['qemu-img', 'compare', '-q', str(drv.inst_dir / 'disk'), str(copy)],
                   check=True)


def test_a_peer_cannot_smuggle_options_into_the_fetch(tmp_path):
    drv = _Driver(tmp_path)
    with pytest.raises(exception.InvalidRequest) as ei:
        drv._fetch('127.0.0.1,tls-creds=x', 10809, str(tmp_path), 'raw',
                   str(tmp_path / 'x'))
    assert 'migration.address' in str(ei.value)
    with pytest.raises(exception.InvalidRequest):
        drv._fetch(ADDRESS, 70000, str(tmp_path), 'raw', str(tmp_path / 'x'))


def test_migrate_arguments():
    args = validation.validate('migrate', {'instance_uuid': UUID,
                                           'dest_host': 'host-b'})
    assert args['flavor'] is None
    with pytest.raises(exception.InvalidRequest) as ei:
        validation.validate('migrate', {'instance_uuid': UUID,
                                        'dest_host': 'a*b'})
    assert 'dest_host' in str(ei.value)
    tr = states.TRANSITIONS['migrate']
    assert (tr.allowed, tr.task, tr.end_vm_state) == (
        (states.ACTIVE,), 'resize_migrating', states.RESIZED)
