"""NICs on a running guest: attach_interface / detach_interface end to end.

The real agent, libvirtd + QEMU, a Linux bridge and the module's own OVS
bridge (datapath netdev). One guest (``hot``) starts without NICs; a second
one (``target``) sits on the test bridge with an address from its config
drive. ``hot`` configures a hot-plugged NIC from its metadata
(``hotplug_nic``) and pings ``target`` through it.
"""

import ipaddress
import re
import secrets
import subprocess
import uuid as uuidlib

import pytest
from pyroute2 import IPRoute

from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, open_libvirt, skip_or_fail, test_guest, wait_until)
except ImportError:
    from agent_fixture import (  # noqa: F401
        agent, open_libvirt, skip_or_fail, test_guest, wait_until)

from compute_agent.netfilter import nwfilter
from compute_agent.virt import config


def random_mac():
    return 'fa:16:3e:%02x:%02x:%02x' % tuple(secrets.token_bytes(3))


def make_vif(vif_type, devname, bridge, ip=None, cidr=None):
    subnets = ([{'cidr': cidr, 'gateway': None, 'ips': [{'address': ip}], 'dns': []}]
               if ip else [])
    return {'id': str(uuidlib.uuid4()), 'address': random_mac(), 'type': vif_type,
            'devname': devname,
            'network': {'id': 'net-' + secrets.token_hex(4), 'bridge': bridge,
                        'label': 'hot', 'mtu': 1500, 'subnets': subnets},
            'details': {}}


def link_master(name):
    """(exists, master index) of a host link."""
    with IPRoute() as ipr:
        links = ipr.get_links(ifname=name)
        if not links:
            return False, None
        return True, links[0].get_attr('IFLA_MASTER')


def link_index(name):
    with IPRoute() as ipr:
        return ipr.link_lookup(ifname=name)[0]


def ovs_ports(bridge):
    proc = subprocess.run(['ovs-vsctl', '--timeout=30', 'list-ports', bridge],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        skip_or_fail('Open vSwitch is not usable: ' + proc.stderr.strip())
    return proc.stdout.split()


def nwfilters():
    lv = open_libvirt()
    try:
        return set(lv.listNWFilters())
    finally:
        lv.close()


def live_filterref(uuid, mac):
    lv = open_libvirt()
    try:
        xml = lv.lookupByUUIDString(uuid).XMLDesc(0)
    finally:
        lv.close()
    found = re.search(r"<mac address='%s'/>.*?<filterref filter='([^']+)'" % mac, xml, re.S)
    return found.group(1) if found else None


def live_macs(uuid):
    lv = open_libvirt()
    try:
        xml = lv.lookupByUUIDString(uuid).XMLDesc(0)
    finally:
        lv.close()
    return {i.mac for i in config.Domain.parse(xml).interfaces}


@pytest.fixture(scope='module')
def net(agent):
    n = type('Net', (), {})()
    n.bridge = agent.fresh_link('cabr')
    n.cidr = ipaddress.ip_network('10.%d.%d.0/24' % (secrets.randbelow(200) + 20,
                                                     secrets.randbelow(250)))
    n.ip_target, n.ip_hot = str(n.cidr[21]), str(n.cidr[22])
    n.target_vif = make_vif('bridge', agent.fresh_link('tapca'), n.bridge,
                            ip=n.ip_target, cidr=str(n.cidr))
    # Its address is listed: anti-spoofing (on by default) lets only that through.
    n.hot_vif = make_vif('bridge', agent.fresh_link('tapca'), n.bridge,
                         ip=n.ip_hot, cidr=str(n.cidr))
    # A second network on the module's OVS bridge, with a guest of its own.
    n.ovs_cidr = ipaddress.ip_network('10.%d.%d.0/24' % (secrets.randbelow(200) + 20,
                                                         secrets.randbelow(250)))
    n.ip_ovs_target, n.ip_ovs_hot = str(n.ovs_cidr[31]), str(n.ovs_cidr[32])
    n.ovs_target_vif = make_vif('ovs', agent.fresh_link('tapca'), agent.ovs_bridge,
                                ip=n.ip_ovs_target, cidr=str(n.ovs_cidr))
    n.ovs_vif = make_vif('ovs', agent.fresh_link('tapca'), agent.ovs_bridge,
                         ip=n.ip_ovs_hot, cidr=str(n.ovs_cidr))
    n.target, _ = agent.spawn(label='target', network_info=[n.target_vif])
    n.ovs_target, _ = agent.spawn(label='ovstarget', network_info=[n.ovs_target_vif])
    meta = {'hotplug_nic': '%s=%s/24=%s %s=%s/24=%s' % (
        n.hot_vif['address'], n.ip_hot, n.ip_target,
        n.ovs_vif['address'], n.ip_ovs_hot, n.ip_ovs_target)}
    n.hot, _ = agent.spawn(label='hot', metadata=meta)
    for guest in (n.target, n.ovs_target, n.hot):
        agent.wait_console(guest['uuid'], 'READY', timeout=90)
    return n


def test_attach_bridge_interface_pings_and_detach_removes_it(agent, net):
    uuid, vif = net.hot['uuid'], net.hot_vif
    since = agent.reports.mark()
    record = agent.call('attach_interface', instance_uuid=uuid, vif=vif)
    assert [v['id'] for v in record['vifs']] == [vif['id']]
    assert record['vifs'][0]['devname'] == vif['devname']
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid
                       and r.get('event') == 'attach_interface.end', 30, 'the end report', since)
    assert [(r['event'], r['task_state']) for r in agent.reports.states(uuid, since)] == [
        ('attach_interface.start', 'attaching_interface'), ('attach_interface.end', None)]
    console = agent.wait_console(uuid, 'HOTPLUG-NIC ', timeout=30)
    ifname = re.search(r'^HOTPLUG-NIC (\S+) %s$' % vif['address'], console, re.M).group(1)
    assert link_master(vif['devname']) == (True, link_index(net.bridge))
    out = agent.wait_console(uuid, 'HOTPLUG-PING-', timeout=60)
    assert 'HOTPLUG-PING-OK %s' % net.ip_target in out, out
    # The NIC is filtered like one of a spawn: its own nwfilter, which the
    # ping from its listed address passed.
    name = nwfilter.filter_name(vif)
    assert live_filterref(uuid, vif['address']) == name
    assert name in nwfilters()

    record = agent.call('detach_interface', instance_uuid=uuid, vif_id=vif['id'])
    assert record['vifs'] == []
    agent.wait_console(uuid, 'HOTPLUG-NIC-GONE %s' % ifname, timeout=30)
    assert vif['address'] not in live_macs(uuid)
    assert link_master(vif['devname'])[0] is False      # libvirt's tap went with it
    assert name not in nwfilters()                      # and its filter


def test_attach_and_detach_ovs_interface(agent, net):
    uuid, vif = net.hot['uuid'], net.ovs_vif
    agent.call('attach_interface', instance_uuid=uuid, vif=vif)
    console = agent.wait_console(uuid, 'HOTPLUG-NIC %s' % '', timeout=30)
    wait_until(lambda: re.search(r'^HOTPLUG-NIC \S+ %s$' % vif['address'],
                                 agent.console(uuid), re.M), 30, 'the OVS NIC in the guest')
    assert vif['devname'] in ovs_ports(agent.ovs_bridge), console
    out = agent.wait_console(uuid, 'HOTPLUG-PING-OK %s' % net.ip_ovs_target, timeout=60)
    assert 'HOTPLUG-PING-FAIL %s' % net.ip_ovs_target not in out
    record = agent.call('detach_interface', instance_uuid=uuid, vif_id=vif['id'])
    assert record['vifs'] == []
    assert vif['devname'] not in ovs_ports(agent.ovs_bridge)
    assert vif['address'] not in live_macs(uuid)


def test_bad_interface_requests_change_nothing(agent, net):
    uuid = net.hot['uuid']
    before = agent.get_info(uuid)
    with pytest.raises(RemoteError) as ei:
        agent.call('detach_interface', instance_uuid=uuid, vif_id='no-such-port')
    assert ei.value.exc_type == 'InterfaceNotFound'
    dup = dict(make_vif('bridge', agent.fresh_link('tapca'), net.bridge),
               address=net.target_vif['address'])
    agent.call('attach_interface', instance_uuid=uuid, vif=net.hot_vif)
    try:
        for bad, field in ((dict(dup, id=net.hot_vif['id']), 'vif.id'),
                           (dict(dup, devname=net.hot_vif['devname']), 'vif'),
                           (dict(dup, type='nosuchtype'), 'vif.type')):
            with pytest.raises(RemoteError) as ei:
                agent.call('attach_interface', instance_uuid=uuid, vif=bad)
            assert ei.value.exc_type == 'InvalidRequest' and field in str(ei.value.value)
            assert [v['id'] for v in agent.get_info(uuid)['vifs']] == [net.hot_vif['id']]
    finally:
        agent.call('detach_interface', instance_uuid=uuid, vif_id=net.hot_vif['id'])
    assert agent.get_info(uuid)['vifs'] == before['vifs']
