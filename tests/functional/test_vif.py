"""VIF drivers against real Linux bridges, taps, Open vSwitch and libvirt.

Needs root, and for the guest tests a running libvirtd and Open vSwitch
(tools/start-services.sh). OVS bridges use the userspace ``netdev``
datapath: these machines have no kernel OVS module. Guests are tiny
firmware-only TCG domains (no disk; they sit in the BIOS trying to boot from
the network), so each starts in ~0.3 s. Outside CI missing pieces skip the
tests; with CI set they fail.

Every device gets a fresh ``catest<hex>`` / ``tapcatest<hex>`` name, checked
not to exist beforehand, and is removed in a finalizer: host interfaces
are never touched.
"""

import json
import os
import pathlib
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from lxml import etree
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.vif import netdev
from compute_agent.vif import ovsdb
from compute_agent.vif.loader import VifDrivers
from compute_agent.virt import config
from compute_agent.virt import schema

try:
    from tests.functional.guest_fixture import (  # noqa: F401
        destroy_quietly, libvirt_conn, skip_or_fail)
    from tests.functional.plugin_install import fake_install
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from guest_fixture import destroy_quietly, libvirt_conn, skip_or_fail  # noqa: F401
    from plugin_install import fake_install

REPO = pathlib.Path(__file__).resolve().parents[2]
THIRDPARTY = REPO / 'tests' / 'fixtures' / 'thirdparty_vif'

pytestmark = [pytest.mark.libvirt]


# -- fixtures -------------------------------------------------------------------

@pytest.fixture
def root():
    if os.geteuid() != 0:
        skip_or_fail('creating bridges and taps needs root')
    if not os.path.exists('/dev/net/tun'):
        skip_or_fail('/dev/net/tun is missing')


def _ovs_running():
    if shutil.which('ovs-vsctl') is None:
        return 'ovs-vsctl not found (package openvswitch-switch)'
    for argv in (['ovs-vsctl', '--timeout=5', 'show'],
                 ['ovs-appctl', '--timeout=5', '-t', 'ovs-vswitchd', 'version']):
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=30, check=False)
        if proc.returncode != 0:
            return '%s failed: %s' % (' '.join(argv), proc.stdout.strip())
    return None


@pytest.fixture
def ovs(root):
    problem = _ovs_running()
    if problem:
        skip_or_fail('Open vSwitch is not running (tools/start-services.sh): ' + problem)
    return ovsdb.OvsVsctl(timeout=30)


class Names:
    """Unique device names for one test; whatever exists at the end is removed."""

    def __init__(self):
        self.links = []
        self.ovs_bridges = []
        self.domains = []

    def _fresh(self, make):
        for _ in range(20):
            name = make(secrets.token_hex(2))
            if not netdev.link_exists(name) and name not in self.links:
                self.links.append(name)
                return name
        raise RuntimeError('no free device name')

    def bridge(self):
        return self._fresh(lambda h: 'catest' + h)                  # 10 chars

    def tap(self):
        return self._fresh(lambda h: 'tapcatest' + h)               # 13 chars

    def ovs_bridge(self):
        name = self.bridge()
        self.ovs_bridges.append(name)
        return name

    def domain(self):
        name = 'catest-vif-' + secrets.token_hex(4)
        self.domains.append(name)
        return name


@pytest.fixture
def names(root):
    n = Names()
    yield n
    if n.domains:
        import libvirt
        try:
            conn = libvirt.open('qemu:///system')
        except libvirt.libvirtError:
            conn = None
        if conn is not None:
            for name in n.domains:
                destroy_quietly(conn, name)
            conn.close()
    for br in n.ovs_bridges:
        subprocess.run(['ovs-vsctl', '--timeout=30', '--if-exists', 'del-br', br],
                       check=False, timeout=60, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    for name in n.links:
        # Only devices of the kinds the tests create; never anything else.
        try:
            netdev.delete_link(name, kinds=('tun', 'bridge'))
        except netdev.NetdevError:
            pass


def make_conf(**overrides):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    for key, value in overrides.items():
        group, _, name = key.rpartition('.')
        conf.set_override(name, value, group or None)
    return conf


def random_mac():
    return 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3))


def make_vif(vif_type, devname, bridge=None, mtu=None, vif_id=None):
    return {'id': vif_id or str(uuid.uuid4()), 'address': random_mac(),
            'type': vif_type, 'devname': devname,
            'network': {'id': str(uuid.uuid4()), 'bridge': bridge, 'label': 'test',
                        'mtu': mtu, 'subnets': []},
            'details': {}}


def make_instance(name):
    return {'uuid': str(uuid.uuid4()), 'name': name}


def guest_xml(instance, ifaces):
    """A firmware-only TCG guest: no disk, boots (forever) from the network."""
    dom = config.Domain(type='qemu', name=instance['name'], uuid=instance['uuid'],
                        memory_unit='KiB', memory_kib=64 * 1024, vcpus=1)
    dom.os = config.OS(type='hvm', arch='x86_64', machine='pc')
    dom.os.add('boot', config.Boot(dev='network'))
    for iface in ifaces:
        dom.add_device(iface)
    schema.validate_domain(dom.format())
    return dom.to_xml()


def start_guest(conn, drivers, instance, network_info):
    """get_config -> plug_all -> createXML -> post_start_all, as the driver does."""
    ifaces = [drv.get_config(instance, vif, 'qemu')
              for drv, vif in drivers.for_network_info(network_info)]
    drivers.plug_all(instance, network_info)
    t = time.monotonic()
    dom = conn.createXML(guest_xml(instance, ifaces), 0)
    started = time.monotonic() - t
    drivers.post_start_all(instance, network_info)
    return dom, started


def live_interfaces(dom):
    return etree.fromstring(dom.XMLDesc(0)).findall('devices/interface')


# -- 1. Linux bridge --------------------------------------------------------------

def test_bridge_vif_with_guest(names, libvirt_conn):
    conf = make_conf()
    drivers = VifDrivers(conf)
    br, tap = names.bridge(), names.tap()
    vif = make_vif('bridge', tap, bridge=br, mtu=1450)
    instance = make_instance(names.domain())

    t = time.monotonic()
    drivers.plug_all(instance, [vif])
    plug_time = time.monotonic() - t
    drivers.plug_all(instance, [vif])                       # idempotent
    info = netdev.link_info(br)
    assert info['kind'] == 'bridge' and info['up'] and info['mtu'] == 1450
    assert not netdev.link_exists(tap)                      # libvirt makes the tap

    dom, started = start_guest(libvirt_conn, drivers, instance, [vif])
    tap_info = netdev.link_info(tap)
    assert tap_info is not None, 'libvirt did not create %s' % tap
    assert tap_info['kind'] == 'tun'
    assert tap_info['master'] == br == netdev.master_of(tap)      # IFLA_MASTER
    assert tap_info['mtu'] == 1450
    assert netdev.link_info(br)['mtu'] == 1450
    (live,) = live_interfaces(dom)
    assert live.find('target').get('dev') == tap
    assert live.find('mac').get('address') == vif['address']

    t = time.monotonic()
    dom.destroy()
    drivers.unplug_all(instance, [vif])
    drivers.unplug_all(instance, [vif])                     # idempotent
    teardown = time.monotonic() - t
    assert not netdev.link_exists(tap)
    assert netdev.link_info(br)['kind'] == 'bridge'         # the bridge stays
    print('bridge: plug %.3fs, guest start %.2fs, destroy+unplug %.2fs'
          % (plug_time, started, teardown))


def test_bridge_defaults_and_existing_bridge(names):
    conf = make_conf(**{'linux_bridge.default_mtu': 1480})
    drivers = VifDrivers(conf)
    instance = make_instance('x')
    # A new bridge without a network MTU gets [linux_bridge] default_mtu.
    br = names.bridge()
    drivers.plug_all(instance, [make_vif('bridge', names.tap(), bridge=br)])
    assert netdev.link_info(br)['mtu'] == 1480
    # An existing (down) bridge is brought up; its MTU is left alone.
    br2 = names.bridge()
    netdev.ensure_bridge(br2, 1400)
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        ipr.link('set', index=ipr.link_lookup(ifname=br2)[0], state='down')
    drivers.plug_all(instance, [make_vif('bridge', names.tap(), bridge=br2, mtu=1450)])
    info = netdev.link_info(br2)
    assert info['up'] and info['mtu'] == 1400


def test_bridge_unplug_removes_leftover_tap_only(names):
    drivers = VifDrivers(make_conf())
    br, tap = names.bridge(), names.tap()
    vif = make_vif('bridge', tap, bridge=br)
    netdev.ensure_tap(tap)                  # e.g. left by a crashed libvirtd
    drivers.unplug_all(make_instance('x'), [vif])
    assert not netdev.link_exists(tap)
    # A devname that names a bridge (not a tap) is refused, not deleted.
    netdev.ensure_bridge(tap, 1500)
    with pytest.raises(exception.VifPlugFailed, match='refusing to delete'):
        drivers.unplug_all(make_instance('x'), [vif])
    assert netdev.link_info(tap)['kind'] == 'bridge'


# -- 2. Open vSwitch ----------------------------------------------------------------

def test_ovs_vif_with_guest(names, ovs, libvirt_conn):
    br = names.ovs_bridge()
    tap = names.tap()
    conf = make_conf(**{'ovs.integration_bridge': br, 'ovs.datapath_type': 'netdev'})
    drivers = VifDrivers(conf)
    vif = make_vif('ovs', tap, bridge=br, mtu=1400)
    instance = make_instance(names.domain())
    expected = {'iface-id': vif['id'], 'attached-mac': vif['address'],
                'vm-uuid': instance['uuid'], 'iface-status': 'active'}

    t = time.monotonic()
    drivers.plug_all(instance, [vif])
    plug_time = time.monotonic() - t
    drivers.plug_all(instance, [vif])                       # idempotent
    assert ovs.br_exists(br)
    _, out = ovs.run('get', 'Bridge', br, 'datapath_type')
    assert out.strip().strip('"') == 'netdev'
    assert ovs.interface_state(br)['ofport'] == 65534       # really created
    assert ovs.list_ports(br) == [tap]                      # pre-created port
    assert ovs.external_ids(tap) == expected

    dom, started = start_guest(libvirt_conn, drivers, instance, [vif])
    assert ovs.list_ports(br) == [tap]
    ids = ovs.external_ids(tap)
    assert {k: ids.get(k) for k in expected} == expected, ids
    assert ids.get('vm-id') == instance['uuid']             # libvirt's own key
    state = ovs.interface_state(tap)
    assert state['ofport'] >= 1 and state['error'] is None, state
    assert netdev.link_info(tap)['mtu'] == 1400
    (live,) = live_interfaces(dom)
    assert live.find('virtualport').get('type') == 'openvswitch'

    t = time.monotonic()
    dom.destroy()
    drivers.unplug_all(instance, [vif])
    drivers.unplug_all(instance, [vif])                     # idempotent
    teardown = time.monotonic() - t
    assert ovs.list_ports(br) == []
    assert not ovs.interface_exists(tap)
    assert not netdev.link_exists(tap)
    assert ovs.br_exists(br)                                # shared: stays
    print('ovs: plug %.3fs, guest start %.2fs, destroy+unplug %.2fs'
          % (plug_time, started, teardown))


def test_ovs_post_start_restores_vm_uuid(names, ovs, libvirt_conn):
    """A libvirt that recreates the port from scratch loses vm-uuid: post_start."""
    br, tap = names.ovs_bridge(), names.tap()
    conf = make_conf(**{'ovs.integration_bridge': br, 'ovs.datapath_type': 'netdev'})
    drivers = VifDrivers(conf)
    vif = make_vif('ovs', tap)
    instance = make_instance(names.domain())
    dom, _ = start_guest(libvirt_conn, drivers, instance, [vif])
    ovs.run('remove', 'Interface', tap, 'external_ids', 'vm-uuid')
    assert 'vm-uuid' not in ovs.external_ids(tap)
    drivers.post_start_all(instance, [vif])
    assert ovs.external_ids(tap)['vm-uuid'] == instance['uuid']
    dom.destroy()
    # After the guest stops, post_start reports the missing port.
    with pytest.raises(exception.VifPlugFailed, match='not on'):
        drivers.post_start_all(instance, [vif])
    drivers.unplug_all(instance, [vif])


def test_ovs_system_datapath_without_kernel_module_fails_clearly(names, ovs):
    """NOTES.md trap: add-br exits 0 although the bridge does not work."""
    br = names.ovs_bridge()
    conf = make_conf(**{'ovs.integration_bridge': br, 'ovs.datapath_type': 'system'})
    vif = make_vif('ovs', names.tap())
    try:
        VifDrivers(conf).plug_all(make_instance('x'), [vif])
    except exception.VifPlugFailed as e:
        assert vif['id'] in e.message and 'netdev' in e.message, e.message
        assert not ovs.br_exists(br)                        # no broken bridge left
    else:
        pytest.skip('this kernel has an OVS datapath: system bridges work here')


# -- 3. ethernet (agent-made tap) ----------------------------------------------------

def test_ethernet_vif_with_guest(names, libvirt_conn):
    conf = make_conf(**{'ethernet.tap_owner': 'root'})
    drivers = VifDrivers(conf)
    tap = names.tap()
    vif = make_vif('ethernet', tap, mtu=1420)
    instance = make_instance(names.domain())

    t = time.monotonic()
    drivers.plug_all(instance, [vif])
    plug_time = time.monotonic() - t
    drivers.plug_all(instance, [vif])                       # idempotent
    info = netdev.link_info(tap)
    assert info['kind'] == 'tun' and info['tun_type'] == netdev.TUN_TYPE_TAP
    assert info['mtu'] == 1420 and info['up']
    assert not info['carrier']                              # nobody holds it yet

    dom, started = start_guest(libvirt_conn, drivers, instance, [vif])
    (live,) = live_interfaces(dom)
    assert live.get('type') == 'ethernet'
    assert live.find('target').get('dev') == tap
    assert live.find('target').get('managed') == 'no'
    info = netdev.link_info(tap)
    assert info['carrier'], 'QEMU does not hold %s' % tap   # attached: carrier up
    assert info['mtu'] == 1420

    t = time.monotonic()
    dom.destroy()
    assert netdev.link_exists(tap)                  # unmanaged: libvirt leaves it
    assert not netdev.link_info(tap)['carrier']
    drivers.unplug_all(instance, [vif])
    drivers.unplug_all(instance, [vif])                     # idempotent
    teardown = time.monotonic() - t
    assert not netdev.link_exists(tap)
    print('ethernet: plug %.3fs, guest start %.2fs, destroy+unplug %.2fs'
          % (plug_time, started, teardown))


def test_ethernet_refuses_foreign_device(names):
    drivers = VifDrivers(make_conf())
    name = names.tap()
    netdev.ensure_bridge(name, 1500)        # a bridge that happens to be tap-named
    with pytest.raises(exception.VifPlugFailed, match='not a tap'):
        drivers.plug_all(make_instance('x'), [make_vif('ethernet', name)])
    assert netdev.link_info(name)['kind'] == 'bridge'


# -- 4. third-party driver by entry point ------------------------------------------------

def test_thirdparty_driver_picked_by_entry_point(tmp_path):
    # Not installed in this process: its type is unknown here.
    drivers = VifDrivers(make_conf())
    assert 'thirdparty' not in drivers.known_types()
    with pytest.raises(exception.InvalidRequest, match='unknown VIF type') as err:
        drivers.get('thirdparty')
    assert 'thirdparty' not in err.value.message

    site = fake_install(THIRDPARTY, tmp_path / 'site')
    log = tmp_path / 'calls.log'
    script = textwrap.dedent('''
        import json, sys
        from oslo_config import cfg
        from compute_agent import conf as agent_conf
        from compute_agent.vif.loader import VifDrivers

        conf = agent_conf.register_all(cfg.ConfigOpts())
        conf([], project='compute-agent', default_config_files=[])
        drivers = VifDrivers(conf)
        drv = drivers.get('thirdparty')          # registers [thirdparty]
        conf.set_override('log_file', sys.argv[1], 'thirdparty')
        instance = {'uuid': 'inst-uuid', 'name': 'x'}
        vif = {'id': 'port-1', 'address': 'fa:16:3e:00:00:01', 'type': 'thirdparty',
               'devname': 'tapport-1', 'network': {}}
        iface = drv.get_config(instance, vif, 'kvm')
        drivers.plug_all(instance, [vif])
        drivers.post_start_all(instance, [vif])
        drivers.unplug_all(instance, [vif])
        print(json.dumps({'module': type(drv).__module__, 'class': type(drv).__name__,
                          'known': drivers.known_types(),
                          'xml': iface.to_xml(pretty=False)}))
    ''')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]),
               XDG_CACHE_HOME=str(tmp_path / 'cache'))     # stevedore's cache
    proc = subprocess.run([sys.executable, '-c', script, str(log)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result['module'] == 'thirdparty_vif' and result['class'] == 'Driver'
    assert {'bridge', 'ethernet', 'ovs', 'thirdparty'} <= set(result['known'])
    assert "target dev=\"tapport-1\" managed=\"no\"" in result['xml']
    assert log.read_text().splitlines() == [
        'plug inst-uuid port-1', 'post_start inst-uuid port-1', 'unplug inst-uuid port-1']


# -- 5. errors before anything is created ----------------------------------------------

def _nothing_created(bridges=(), taps=(), ovs_bridges=()):
    for name in list(bridges) + list(taps):
        assert not netdev.link_exists(name), '%s was created' % name
    for br in ovs_bridges:
        proc = subprocess.run(['ovs-vsctl', '--timeout=10', 'br-exists', br],
                              check=False, timeout=30)
        assert proc.returncode == 2, 'OVS bridge %s was created' % br


@pytest.mark.parametrize('vif_type', ['bridge', 'ovs', 'ethernet'])
@pytest.mark.parametrize('problem', ['bad_mac', 'long_devname', 'unknown_type_later'])
def test_invalid_vifs_create_nothing(names, vif_type, problem):
    br, ovs_br, tap = names.bridge(), names.ovs_bridge(), names.tap()
    conf = make_conf(**{'ovs.integration_bridge': ovs_br, 'ovs.datapath_type': 'netdev'})
    drivers = VifDrivers(conf)
    vif = make_vif(vif_type, tap, bridge=br, mtu=1450)
    network_info = [vif]
    if problem == 'bad_mac':
        vif['address'] = 'fa:16:3e:zz:00:01'
        expected, match = exception.VifPlugFailed, 'address must be a MAC address'

    elif problem == 'long_devname':
        vif['devname'] = tap + 'xy'                          # 15 characters
        expected, match = exception.VifPlugFailed, 'devname must be 1-14 letters'
    else:
        # A good VIF first: nothing is plugged before every type is known.
        network_info.append(make_vif('nosuchtype', names.tap()))
        expected, match = exception.InvalidRequest, r'unknown VIF type \(installed: '

    with pytest.raises(expected, match=match) as err:
        drivers.plug_all(make_instance('x'), network_info)
    if expected is exception.VifPlugFailed:
        assert err.value.kwargs['vif_id'] == vif['id']
        assert vif['id'] in err.value.message
    else:
        assert err.value.field == 'network_info[1].type'
    _nothing_created(bridges=[br], taps=[tap, tap + 'xy'],
                     ovs_bridges=[ovs_br] if _ovs_running() is None else [])


def test_failed_plug_rolls_back_earlier_vifs(names):
    drivers = VifDrivers(make_conf())
    br, tap1, blocker = names.bridge(), names.tap(), names.tap()
    netdev.ensure_bridge(blocker, 1500)     # makes the third VIF's plug fail
    network_info = [make_vif('ethernet', tap1, mtu=1400),
                    make_vif('bridge', names.tap(), bridge=br),
                    make_vif('ethernet', blocker)]
    with pytest.raises(exception.VifPlugFailed, match='not a tap') as err:
        drivers.plug_all(make_instance('x'), network_info)
    assert err.value.kwargs['vif_id'] == network_info[2]['id']
    assert not netdev.link_exists(tap1)                 # rolled back
    assert netdev.link_info(br)['kind'] == 'bridge'     # bridges are never deleted
    assert netdev.link_info(blocker)['kind'] == 'bridge'    # not ours: untouched
