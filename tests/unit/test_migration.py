"""Live migration pieces that need no second host: the destination's XML,
which disks a block migration copies, where a peer is reached."""

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.conf import libvirt as libvirt_conf
from compute_agent.rpc import peer as peer_mod
from compute_agent.virt import migration

SRC, DEST = '/srv/a/instances/vm-1', '/srv/b/instances/vm-1'
XML = f'''<domain type="qemu"><name>vm-1</name>
<os><type arch="x86_64" machine="pc-i440fx-7.2">hvm</type>
<kernel>{SRC}/kernel</kernel><initrd>{SRC}/ramdisk</initrd></os>
<devices>
<disk type="file" device="disk"><source file="{SRC}/disk"/>
<backingStore type="file"><source file="/srv/a/instances/_base/abc"/></backingStore>
<target dev="vda"/></disk>
<disk type="file" device="disk"><source file="{SRC}/disk.config"/><readonly/>
<target dev="vdz"/></disk>
<disk type="file" device="disk"><source file="/srv/volumes/vol-1"/>
<target dev="vdb"/></disk>
<disk type="file" device="cdrom"><source file="{SRC}/disk.iso"/>
<target dev="hdc"/></disk>
<serial type="pty"><log file="{SRC}/console.log" append="on"/></serial>
</devices></domain>'''


def conf(**libvirt_opts):
    c = agent_conf.register_all(cfg.ConfigOpts())
    c([], project='compute-agent', default_config_files=[])
    c.set_override('my_ip', '192.0.2.7')
    for k, v in libvirt_opts.items():
        c.set_override(k, v, 'libvirt')
    return c


def test_block_migration_copies_only_writable_instance_disks():
    # Not the read-only config drive, not the volume, not a cdrom.
    assert migration.writable_local_disks(XML, SRC) == ['vda']
    assert migration.writable_local_disks(XML, SRC + '-other') == []


def test_destination_xml_has_its_paths_and_no_backing_chain():
    out = migration.retarget_xml(XML, SRC, DEST)
    assert SRC + '/' not in out
    for name in ('kernel', 'ramdisk', 'disk', 'disk.config', 'console.log'):
        assert f'{DEST}/{name}' in out, name
    assert '/srv/volumes/vol-1' in out          # volumes stay where they are
    assert 'backingStore' not in out and '_base' not in out


def test_shared_storage_keeps_the_paths():
    out = migration.retarget_xml(XML, SRC, SRC)
    assert f'{SRC}/disk' in out and 'backingStore' not in out


@pytest.mark.parametrize('opts, address, uri', [
    ({}, '192.0.2.9', 'qemu+tcp://192.0.2.9/system'),
    ({'live_migration_scheme': 'tls'}, '192.0.2.9', 'qemu+tls://192.0.2.9/system'),
    ({}, '2001:db8::9', 'qemu+tcp://[2001:db8::9]/system'),
    ({'live_migration_uri': 'qemu+ssh://nova@%s/system'}, 'h2',
     'qemu+ssh://nova@h2/system'),
])
def test_migration_uri(opts, address, uri):
    assert libvirt_conf.migration_uri(conf(**opts), address) == uri


def test_inbound_address_defaults_to_my_ip():
    assert libvirt_conf.migration_address(conf()) == '192.0.2.7'
    assert libvirt_conf.migration_address(
        conf(live_migration_inbound_addr='198.51.100.1')) == '198.51.100.1'


class _Client:
    def __init__(self, exc):
        self.exc = exc

    def call(self, *a, **kw):
        raise self.exc

    def close(self):
        pass


@pytest.mark.parametrize('raised, expected', [
    (peer_mod.client_mod.Unroutable('x'), peer_mod.PeerUnavailable),
    (peer_mod.client_mod.Timeout('x'), peer_mod.PeerUnavailable),
    (peer_mod.client_mod.RemoteError('MigrationPreCheckError', 'no room'),
     exception.MigrationPreCheckError),
    (peer_mod.client_mod.RemoteError('KeyError', 'oops'), exception.MigrationError),
])
def test_peer_errors(raised, expected):
    peer = peer_mod.Peer.__new__(peer_mod.Peer)
    peer.host, peer._client = 'h2', _Client(raised)
    with pytest.raises(expected):
        peer.call('_migration_check', 'u')


def test_probe_names_are_checked(tmp_path):
    drv = migration.LiveMigration()
    drv.conf = conf()
    drv.conf.set_override('instances_path', str(tmp_path))
    name = drv.write_probe()
    assert drv.sees_probe(name)
    drv.remove_probe(name)
    assert not drv.sees_probe(name)
    with pytest.raises(exception.InvalidRequest):
        drv.sees_probe('../../etc/passwd')
