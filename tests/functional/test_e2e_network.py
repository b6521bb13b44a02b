"""End to end: VIFs plugged by the real agent process, driven over RabbitMQ.

Linux bridge, Open vSwitch and ethernet (agent-made tap) VIFs are checked on
the host (pyroute2, ovs-vsctl) and in libvirt; two test guests on one bridge
must reach each other (the guest configures its NIC from the config drive's
network_data.json and pings the address in its metadata); invalid VIFs must
fail before anything is created.

Every bridge and tap has a fresh name (``cabr<hex>``, ``tapca<hex>``) and the
OVS integration bridge is the module's own (``[ovs] integration_bridge =
cabr<hex>``, datapath ``netdev``): nothing shared is touched. Needs root,
RabbitMQ, libvirtd and OVS (tools/start-services.sh) and the test guest;
skips otherwise, fails when CI is set.
"""

import ipaddress
import os
import secrets
import subprocess
import threading
import time
import uuid as uuidlib

import libvirt    # a hard dependency: missing is an error, never a skip
import pytest
from lxml import etree
from pyroute2 import IPRoute

from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, open_libvirt, no_domain, skip_or_fail, test_guest, wait_until)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import (  # noqa: F401
        agent, open_libvirt, no_domain, skip_or_fail, test_guest, wait_until)

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(300)]


# -- helpers ------------------------------------------------------------------------

@pytest.fixture(scope='module')
def ovs_running():
    for argv in (['ovs-vsctl', '--timeout=5', 'show'],
                 ['ovs-appctl', '--timeout=5', '-t', 'ovs-vswitchd', 'version']):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                  check=False)
        except FileNotFoundError:
            skip_or_fail('Open vSwitch is not installed (openvswitch-switch)')
        if proc.returncode != 0:
            skip_or_fail('Open vSwitch is not running (tools/start-services.sh): '
                         + proc.stderr.strip())


@pytest.fixture
def lv():
    conn = open_libvirt()
    yield conn
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


def link(name):
    """{'index', 'kind', 'mtu', 'master' (index or None), 'up'} or None."""
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=name)
        if not links:
            return None
        ln = links[0]
        info = ln.get_attr('IFLA_LINKINFO')
        return {'index': ln['index'], 'mtu': ln.get_attr('IFLA_MTU'),
                'master': ln.get_attr('IFLA_MASTER') or None,
                'kind': info.get_attr('IFLA_INFO_KIND') if info is not None else None,
                'up': bool(ln['flags'] & 1)}


def vsctl(*args, check=True):
    proc = subprocess.run(['ovs-vsctl', '--timeout=30', *args], capture_output=True,
                          text=True, timeout=60, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f'ovs-vsctl {" ".join(args)}: {proc.stderr.strip()}')
    return proc.stdout.strip()


def ovs_ports(bridge):
    if subprocess.run(['ovs-vsctl', '--timeout=30', 'br-exists', bridge],
                      timeout=60, check=False).returncode != 0:
        return None
    return vsctl('list-ports', bridge).split()


def random_mac():
    return 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3))


def make_vif(vif_type, devname, bridge=None, mtu=None, ip=None, cidr=None, **extra):
    subnets = []
    if ip:
        subnets = [{'cidr': cidr, 'gateway': None, 'ips': [{'address': ip}], 'dns': []}]
    vif = {'id': str(uuidlib.uuid4()), 'address': random_mac(), 'type': vif_type,
           'devname': devname,
           'network': {'id': 'net-' + secrets.token_hex(4), 'bridge': bridge,
                       'label': 'e2e', 'mtu': mtu, 'subnets': subnets},
           'details': {}}
    vif.update(extra)
    return vif


def live_interfaces(lv, inst):
    xml = lv.lookupByUUIDString(inst['uuid']).XMLDesc(0)
    return etree.fromstring(xml.encode()).findall('devices/interface')


def assert_active(rec):
    assert (rec['vm_state'], rec['task_state'], rec['power_state']) == ('active', None, 1), rec


# -- 8. Linux bridge ------------------------------------------------------------------

def test_bridge_vif(agent, lv):
    bridge, tap = agent.fresh_link('cabr'), agent.fresh_link('tapca')
    vif = make_vif('bridge', tap, bridge=bridge, mtu=1400)
    inst, rec = agent.spawn(label='br', network_info=[vif])
    assert_active(rec)

    br, t = link(bridge), link(tap)
    assert br is not None and br['kind'] == 'bridge' and br['up'], br
    assert t is not None and t['kind'] == 'tun', t
    assert t['master'] == br['index'], (t, br)          # IFLA_MASTER: on the bridge
    assert t['mtu'] == 1400 and t['up'], t
    (iface,) = live_interfaces(lv, inst)
    assert iface.get('type') == 'bridge'
    assert iface.find('source').get('bridge') == bridge
    assert iface.find('target').get('dev') == tap
    assert iface.find('mac').get('address') == vif['address']
    assert iface.find('mtu').get('size') == '1400'

    # A stop/start keeps the tap on the bridge (plugged again on every start).
    agent.call('power_off', instance={'uuid': inst['uuid']}, timeout=0)
    assert link(tap) is None             # libvirt removed its tap with the guest
    assert_active(agent.call('power_on', instance={'uuid': inst['uuid']}))
    assert link(tap)['master'] == link(bridge)['index']

    agent.destroy(inst, network_info=[vif])
    assert no_domain(lv, inst['uuid'])
    assert link(tap) is None
    assert link(bridge) is not None and link(bridge)['kind'] == 'bridge'   # shared: kept


# -- 9. Open vSwitch ---------------------------------------------------------------------

def test_ovs_vif(agent, lv, ovs_running):
    bridge, tap = agent.ovs_bridge, agent.fresh_link('tapca')
    vif = make_vif('ovs', tap, bridge=bridge)
    inst, rec = agent.spawn(label='ovs', network_info=[vif])
    assert_active(rec)

    assert vsctl('port-to-br', tap) == bridge
    assert vsctl('get', 'Bridge', bridge, 'datapath_type') == 'netdev'
    ids = {key: vsctl('get', 'Interface', tap, f'external_ids:{key}').strip('"')
           for key in ('iface-id', 'attached-mac', 'vm-uuid', 'iface-status')}
    assert ids == {'iface-id': vif['id'], 'attached-mac': vif['address'],
                   'vm-uuid': inst['uuid'], 'iface-status': 'active'}, ids
    assert int(vsctl('get', 'Interface', tap, 'ofport')) > 0     # a working port
    (iface,) = live_interfaces(lv, inst)
    assert iface.find('virtualport').get('type') == 'openvswitch'
    assert iface.find('virtualport/parameters').get('interfaceid') == vif['id']
    assert iface.find('target').get('dev') == tap

    agent.destroy(inst, network_info=[vif])
    assert no_domain(lv, inst['uuid'])
    assert tap not in ovs_ports(bridge)
    assert vsctl('port-to-br', tap, check=False) == ''
    assert link(tap) is None


# -- 10. ethernet (agent-made tap) -------------------------------------------------------

def test_ethernet_vif(agent, lv):
    tap = agent.fresh_link('tapca')
    vif = make_vif('ethernet', tap, mtu=1450)
    inst = agent.make_instance('eth')

    # Watch, during the spawn, when the tap appears and when the guest runs:
    # each in a thread of its own, so that a libvirt call stalled behind the
    # domain start does not hold up the look for the tap.
    seen = {}
    stop = threading.Event()

    def guest_runs(conn):
        try:
            return conn.lookupByUUIDString(inst['uuid']).isActive()
        except libvirt.libvirtError:
            return False

    def watch(key, found):
        while not stop.is_set() and key not in seen:
            if found():
                seen[key] = time.monotonic()    # when the look that found it ended
            time.sleep(0.002)

    conn = open_libvirt()
    watchers = [threading.Thread(target=watch, args=args, daemon=True) for args in (
        ('tap', lambda: link(tap) is not None), ('running', lambda: guest_runs(conn)))]
    for w in watchers:
        w.start()
    try:
        _inst, rec = agent.spawn(inst, network_info=[vif])
    finally:
        stop.set()
        for w in watchers:
            w.join(5)
        conn.close()
    assert_active(rec)
    assert 'tap' in seen and 'running' in seen, seen
    # Made before the guest started: seen no later than the running guest.
    assert seen['tap'] <= seen['running'], seen

    t = link(tap)
    assert t['kind'] == 'tun' and t['master'] is None and t['mtu'] == 1450, t
    (iface,) = live_interfaces(lv, inst)
    assert iface.get('type') == 'ethernet'
    assert iface.find('target').get('dev') == tap
    assert iface.find('target').get('managed') == 'no'

    # Unmanaged: the tap outlives the guest's QEMU; a start reuses it.
    agent.call('power_off', instance={'uuid': inst['uuid']}, timeout=0)
    assert link(tap) is not None
    assert_active(agent.call('power_on', instance={'uuid': inst['uuid']}))

    agent.destroy(inst, network_info=[vif])
    assert no_domain(lv, inst['uuid'])
    assert link(tap) is None


# -- 11. two guests on one bridge reach each other -----------------------------------------

@pytest.mark.parametrize('vif_type', ['bridge', 'ovs'])
def test_two_guests_ping(agent, lv, ovs_running, vif_type):
    bridge = agent.fresh_link('cabr') if vif_type == 'bridge' else agent.ovs_bridge
    net = ipaddress.ip_network(f'10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.0/24')
    ip_a, ip_b = str(net[11]), str(net[12])
    vif_a = make_vif(vif_type, agent.fresh_link('tapca'), bridge=bridge, mtu=1500,
                     ip=ip_a, cidr=str(net))
    vif_b = make_vif(vif_type, agent.fresh_link('tapca'), bridge=bridge, mtu=1500,
                     ip=ip_b, cidr=str(net))
    since = agent.reports.mark()
    a, _ = agent.spawn(label='pinga', network_info=[vif_a], cast=True)
    b, _ = agent.spawn(label='pingb', network_info=[vif_b], cast=True,
                       instance=agent.make_instance('pingb', metadata={'ping': ip_a}))
    for inst in (a, b):
        agent.wait_state(inst['uuid'], 'active', None, timeout=60, since=since)
    out_a = agent.wait_console(a['uuid'], f'NET-CONFIGURED: eth0 {ip_a}/24 {vif_a["address"]}')
    assert 'NET-CONFIG-FAILED' not in out_a
    # The guest retries the ping for up to 60 s, prints PING-OK/PING-FAIL, then READY.
    agent.wait_console(b['uuid'], 'PING-', timeout=75)
    out_b = agent.wait_console(b['uuid'], '\nREADY', timeout=15)
    assert f'NET-CONFIGURED: eth0 {ip_b}/24 {vif_b["address"]}' in out_b, out_b
    assert f'PING-OK {ip_a}' in out_b, out_b
    if vif_type == 'ovs':
        assert {vif_a['devname'], vif_b['devname']} <= set(ovs_ports(bridge))
    else:
        idx = link(bridge)['index']
        assert link(vif_a['devname'])['master'] == idx == link(vif_b['devname'])['master']
    for inst, vif in ((a, vif_a), (b, vif_b)):
        agent.destroy(inst, network_info=[vif])
        assert no_domain(lv, inst['uuid'])
        assert link(vif['devname']) is None


# -- 12. invalid VIFs -----------------------------------------------------------------------

BAD_VIFS = {
    # case: (changes to a valid bridge VIF, field named, text in the reason)
    'unknown-type': ({'type': 'nosuchvif'}, 'network_info[0].type', 'unknown VIF type'),
    'bad-mac': ({'address': 'fa:16:3e:zz:00:01'}, 'network_info[0].address', ''),
    'multicast-mac': ({'address': '01:16:3e:00:00:01'}, 'network_info[0].address',
                      'multicast'),
    'long-devname': ({'devname': 'tapca' + 'x' * 10}, 'network_info[0].devname', ''),
    'reserved-devname': ({'devname': 'vnet' + secrets.token_hex(3)}, 'network_info',
                         'devname'),
    'ovs-id-not-uuid': ({'type': 'ovs', 'id': 'port-1'}, 'network_info',
                        'id must be a UUID'),
}


@pytest.mark.parametrize('case', sorted(BAD_VIFS))
def test_invalid_vif_creates_nothing(agent, lv, case):
    changes, field, reason = BAD_VIFS[case]
    bridge, tap = agent.fresh_link('cabr'), agent.fresh_link('tapca')
    ovs_before = ovs_ports(agent.ovs_bridge)
    dirs_before = sorted(os.listdir(agent.instances_path))
    for cast in (False, True):
        vif = make_vif('bridge', tap, bridge=bridge, mtu=1500)
        vif.update(changes)
        agent.track_link(vif['devname'])
        inst = agent.make_instance('badvif')
        if not cast:
            with pytest.raises(RemoteError) as ei:
                agent.spawn(inst, network_info=[vif])
            assert ei.value.exc_type == 'InvalidRequest', ei.value
            message = ei.value.value
        else:
            since = agent.reports.mark()
            agent.spawn(inst, network_info=[vif], cast=True)
            report = agent.wait_state(inst['uuid'], 'error', None, timeout=30, since=since)
            assert report['event'] == 'spawn.error', report
            assert report['error']['class'] == 'InvalidRequest', report
            message = report['error']['message']
        assert f'Invalid request: {field}: ' in message, message
        assert reason in message, message
        with pytest.raises(RemoteError) as ei:
            agent.get_info(inst['uuid'])
        assert ei.value.exc_type == 'InstanceNotFound'
        assert no_domain(lv, inst['uuid'])
    for name in (bridge, tap, vif['devname']):
        assert link(name) is None, name
    assert ovs_ports(agent.ovs_bridge) == ovs_before
    assert sorted(os.listdir(agent.instances_path)) == dirs_before
