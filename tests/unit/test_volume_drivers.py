"""Volume drivers: the disk XML each type produces and its host-side checks.

What runs here for real: the XML (validated against libvirt's RelaxNG
schema), reachability checks against real sockets on 127.0.0.1. rbd and nfs
cannot run on this machine (no Ceph cluster, no kernel NFS client): their
``connect`` is checked with a stand-in libvirt connection and a recorded
``mount`` command, and the tests say so. CHAP secrets on a real libvirtd
are covered by tests/functional/test_e2e_volumes.py.
"""

import os
import socket
import subprocess

import pytest

from compute_agent import exception
from compute_agent.virt import builder
from compute_agent.virt import schema
from compute_agent.virt import volume
from compute_agent.volume import base
from compute_agent.volume import iscsi
from compute_agent.volume import nfs

try:
    from tests.unit import builder_fixtures as bf
except ImportError:
    import builder_fixtures as bf


def conf(**overrides):
    return bf.make_conf('kvm', dict({'libvirt.volume_connect_timeout': 0.5}, **overrides))


def bdm(dev, kind, data, volume_id=None):
    out = {'mount_device': '/dev/' + dev,
           'connection_info': {'driver_volume_type': kind, 'data': data}}
    if volume_id:
        out['volume_id'] = volume_id
    return out


def valid_domain_with(c, *bdms):
    request = bf.make_request(block_device_info=bf.bdi(volumes=list(bdms)))
    plan = bf.build(c, request)
    schema.validate_domain(plan.domain.format())
    return {d.target_dev: d for d in plan.domain.disks}


def test_every_volume_disk_carries_the_volume_id_as_serial():
    c = conf()
    disks = valid_domain_with(
        c, bdm('vdb', 'local', {'device_path': '/srv/a'}, 'volume-0123456789abcdef-long'),
        bdm('vdc', 'local', {'device_path': '/srv/b'}))
    assert disks['vdb'].serial == 'volume-0123456789abc'      # cut to 20
    assert disks['vdc'].serial == 'vdc'        # no volume_id: the mount device
    assert disks['vda'].serial is None         # not a volume


@pytest.mark.parametrize('data, host', [
    ({'socket': '/run/nbd/a.sock', 'export': 'exp'}, None),
    ({'host': '10.0.0.9', 'port': 10810, 'export': 'exp'}, ('10.0.0.9', '10810'))])
def test_nbd_disk(data, host):
    disk = valid_domain_with(conf(), bdm('vdb', 'nbd', data, 'vol-n'))['vdb']
    assert (disk.type, disk.source_protocol, disk.source_name) == ('network', 'nbd', 'exp')
    (h,) = disk.source_hosts
    if host:
        assert (h.name, h.port, h.transport) == (*host, None)
    else:
        assert (h.transport, h.socket, h.name) == ('unix', '/run/nbd/a.sock', None)


def test_iscsi_chap_password_goes_to_a_secret_never_the_xml():
    data = {'target_portal': '[fd00::5]:3261', 'target_iqn': 'iqn.2010-10.org.x:vol',
            'target_lun': 2, 'auth_method': 'CHAP', 'auth_username': 'u',
            'auth_password': 'TOP-SECRET-pw'}
    disk = valid_domain_with(conf(), bdm('vdb', 'iscsi', data, 'vol-i'))['vdb']
    assert 'TOP-SECRET-pw' not in disk.to_xml()
    assert disk.source_name == 'iqn.2010-10.org.x:vol/2'
    assert [(h.name, h.port) for h in disk.source_hosts] == [('fd00::5', '3261')]
    assert disk.auth_secret_usage == iscsi.chap_usage(data)
    assert disk.auth_secret_usage.startswith('compute-agent-iscsi-')
    # Same credentials, same secret; another user, another one.
    assert iscsi.chap_usage(dict(data, target_lun=5)) == disk.auth_secret_usage
    assert iscsi.chap_usage(dict(data, auth_username='v')) != disk.auth_secret_usage


def test_rbd_and_nfs_disks():
    rbd = {'name': 'volumes/v1', 'hosts': ['10.0.0.1'], 'ports': [6789],
           'auth_username': 'cinder', 'secret_uuid': bf.SECRET_UUID}
    nfs_data = {'export': '10.0.0.3:/exports', 'name': 'volume-7'}
    c = conf(**{'libvirt.nfs_mount_point_base': '/mnt/nfs'})
    disks = valid_domain_with(c, bdm('vdb', 'rbd', rbd, 'vol-r'),
                              bdm('vdc', 'nfs', nfs_data, 'vol-f'))
    assert disks['vdb'].auth_secret_uuid == bf.SECRET_UUID
    assert disks['vdb'].auth_secret_type == 'ceph'
    assert disks['vdc'].source_file.startswith('/mnt/nfs/')
    assert disks['vdc'].source_file.endswith('/volume-7')


@pytest.mark.parametrize('portal, expected', [
    ('10.0.0.1:3260', ('10.0.0.1', '3260')), ('10.0.0.1', ('10.0.0.1', '3260')),
    ('[fd00::1]:3262', ('fd00::1', '3262')), ('fd00::1', ('fd00::1', '3260')),
    ('host.example:99', ('host.example', '99'))])
def test_split_portal(portal, expected):
    assert base.split_portal(portal, 3260) == expected


# -- connect: real sockets and files ------------------------------------------------

@pytest.fixture
def listener():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen(4)
        yield s.getsockname()[1]


def closed_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_iscsi_connect_checks_the_portal(listener):
    drv = volume.load(conf(), 'iscsi')
    data = {'target_portal': '127.0.0.1:%d' % listener, 'target_iqn': 'iqn.2010-10.x:y'}
    drv.connect({'data': data}, 'vol-1')          # reachable, no CHAP: nothing else
    drv.disconnect({'data': data}, 'vol-1')
    data['target_portal'] = '127.0.0.1:%d' % closed_port()
    with pytest.raises(exception.VolumeAttachFailed) as err:
        drv.connect({'data': data}, 'vol-1')
    assert 'vol-1' in err.value.message and 'not reachable' in err.value.message


def test_nbd_connect_checks_socket_and_port(tmp_path, listener):
    drv = volume.load(conf(), 'nbd')
    drv.connect({'data': {'host': '127.0.0.1', 'port': listener, 'export': 'e'}}, 'v')
    with pytest.raises(exception.VolumeAttachFailed):
        drv.connect({'data': {'host': '127.0.0.1', 'port': closed_port(), 'export': 'e'}}, 'v')
    path = str(tmp_path / 's')
    with pytest.raises(exception.VolumeAttachFailed, match='NBD socket'):
        drv.connect({'data': {'socket': path, 'export': 'e'}}, 'v')
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
        drv.connect({'data': {'socket': path, 'export': 'e'}}, 'v')
    open(tmp_path / 'f', 'w').close()
    with pytest.raises(exception.VolumeAttachFailed, match='not a socket'):
        drv.connect({'data': {'socket': str(tmp_path / 'f'), 'export': 'e'}}, 'v')


def test_local_connect_checks_the_path(tmp_path):
    drv = volume.load(conf(), 'local')
    f = tmp_path / 'vol'
    f.write_bytes(b'x')
    drv.connect({'data': {'device_path': str(f)}}, 'v')
    drv.connect({'data': {'device_path': str(f)}}, 'v')     # idempotent
    for bad, why in ((tmp_path / 'missing', 'does not exist'), (tmp_path, 'directory')):
        with pytest.raises(exception.VolumeAttachFailed, match=why):
            drv.connect({'data': {'device_path': str(bad)}}, 'v')


class _NoSecrets:
    """Stand-in for a libvirt connection without the secret (no Ceph here)."""

    def call(self, fn):
        import libvirt

        class Conn:
            def secretLookupByUUIDString(self, uuid):
                err = libvirt.libvirtError('no secret')
                err.err = (libvirt.VIR_ERR_NO_SECRET,) + (None,) * 8
                raise err
        return fn(Conn())


def test_rbd_connect_needs_the_ceph_secret():
    drv = volume.load(conf(), 'rbd', connection=_NoSecrets())
    data = {'name': 'p/i', 'auth_username': 'cinder', 'secret_uuid': bf.SECRET_UUID}
    with pytest.raises(exception.VolumeAttachFailed, match=bf.SECRET_UUID):
        drv.connect({'data': data}, 'v')
    drv.connect({'data': {'name': 'p/i'}}, 'v')     # no auth: nothing to check


def test_nfs_connect_mounts_the_export_once(monkeypatch, tmp_path):
    """No kernel NFS client here: the mount command is recorded, not run."""
    c = conf(**{'libvirt.nfs_mount_point_base': str(tmp_path)})
    drv = volume.load(c, 'nfs')
    calls = []
    monkeypatch.setattr(subprocess, 'run', lambda cmd, **kw: calls.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, '', ''))
    mounted = set()
    monkeypatch.setattr(nfs, 'is_mounted', lambda path: path in mounted)
    data = {'export': '10.0.0.3:/exports', 'name': 'v', 'options': 'vers=4'}
    drv.connect({'data': data}, 'v')
    point = drv.mount_point(data['export'])
    assert calls == [['mount', '-t', 'nfs', '-o', 'vers=4', '--', '10.0.0.3:/exports', point]]
    assert os.path.isdir(point)
    mounted.add(point)
    drv.connect({'data': data}, 'v')
    assert len(calls) == 1


def test_unknown_type_names_the_field():
    with pytest.raises(exception.InvalidRequest) as err:
        volume.load(conf(), 'fibre_channel', field='connection_info.driver_volume_type')
    assert err.value.field == 'connection_info.driver_volume_type'


# -- builder extras used by hot-plug --------------------------------------------------

def test_os_command_line_is_appended_and_checked():
    c = bf.make_conf('qemu')
    request = bf.make_request(image_meta={'id': bf.IMAGE_ID,
                                          'properties': {'os_command_line': 'acpi=off quiet'}})
    request['instance']['kernel_id'] = 'kern'
    plan = bf.build(c, request)
    assert plan.domain.os.cmdline.endswith('console=ttyS0 acpi=off quiet')
    request['image_meta']['properties']['os_command_line'] = 'a; rm -rf /'
    with pytest.raises(exception.InvalidRequest) as err:
        bf.build(c, request)
    assert err.value.field == 'image_meta.properties.os_command_line'


def test_q35_gets_spare_root_ports():
    c = bf.make_conf('qemu', {'libvirt.hw_machine_type': 'q35',
                              'libvirt.num_pcie_ports': 3})
    plan = bf.build(c, bf.make_request())
    schema.validate_domain(plan.domain.format())
    assert plan.domain.os.machine == 'q35'
    ports = [x for x in plan.domain.controllers if x.model == 'pcie-root-port']
    assert len(ports) == 3 and len({p.index for p in ports}) == 3
    assert min(p.index for p in ports) > 1
    plain = bf.build(bf.make_conf('qemu'), bf.make_request())
    assert plain.domain.controllers == [] and plain.domain.os.machine is None


def test_volume_disk_for_hotplug_matches_spawn():
    c = conf()
    b = bdm('vdd', 'local', {'device_path': '/srv/x'}, 'vol-x')
    disk = builder.volume_disk(c, b, 'vdd', 'virtio')
    assert disk == valid_domain_with(c, b)['vdd']
