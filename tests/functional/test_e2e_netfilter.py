"""End to end: VIF filters on real guests (libvirtd + QEMU, bridges, OVS).

The test guest's "network filter probes" (tools/build-test-guest.sh) do the
guest side: B prints its ICMP InEchos counter every second; A pings B from
its own address, then from a foreign address, then with a foreign MAC,
between console markers; or A probes B once a second with a ping and TCP
connects (busybox nc) and prints the outcome.

* anti-spoofing (bridge: nwfilter clean-traffic; OVS: OpenFlow), with a
  control run without it that shows the spoofed packets do arrive then;
* security rules: with allow_same_net_traffic=true and rules [] the guests
  reach each other; with it false nothing comes in until a rule allows ICMP
  and one TCP port from A (not another); update_security_rules removes the
  rule and traffic stops, while both guests keep running; the rules survive
  an agent restart and are in the record;
* destroy leaves no nwfilter, ebtables/iptables chain or OVS flow.

Needs the guest built from this branch's tools/build-test-guest.sh
(CA_TEST_CACHE). Unique bridges/taps per test; the OVS bridge is the
module's own.
"""

import ipaddress
import re
import secrets
import subprocess
import time

import pytest

from compute_agent.netfilter import openflow
from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        agent, no_domain, open_libvirt, test_guest)
    from tests.functional.test_e2e_network import (  # noqa: F401
        make_vif, ovs_running, random_mac)
except ImportError:
    from agent_fixture import agent, no_domain, open_libvirt, test_guest  # noqa: F401
    from test_e2e_network import make_vif, ovs_running, random_mac  # noqa: F401

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(600)]


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, check=True,
                          timeout=60).stdout


def on_libvirt(fn):
    """``fn(conn)`` on a fresh connection: the shared libvirtd may be
    restarted by other tests at any time (its guests keep running)."""
    conn = open_libvirt()
    try:
        return fn(conn)
    finally:
        conn.close()


def gone(uuid):
    return on_libvirt(lambda c: no_domain(c, uuid))


def dom_xml(uuid):
    return on_libvirt(lambda c: c.lookupByUUIDString(uuid).XMLDesc(0))


def dom_id(uuid):
    return on_libvirt(lambda c: c.lookupByUUIDString(uuid).ID())


def fresh_net():
    return ipaddress.ip_network(
        f'10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.0/24')


def host_traces(vif, ovs_bridge):
    """What the host holds for a VIF: nwfilter, chains/rules, flows."""
    out = []
    if 'ca-' + vif['id'] in run('virsh', '-c', 'qemu:///system', 'nwfilter-list'):
        out.append('nwfilter ca-' + vif['id'])
    dev = vif['devname']
    for table in ('nat', 'filter'):
        if dev in run('ebtables', '-t', table, '-L'):
            out.append('ebtables %s mentions %s' % (table, dev))
    for tool in ('iptables-save', 'ip6tables-save'):
        if dev in run(tool):
            out.append('%s mentions %s' % (tool, dev))
    if vif['type'] == 'ovs':
        flows = subprocess.run(
            ['ovs-ofctl', 'dump-flows', ovs_bridge,
             'cookie=%s/-1' % openflow.cookie(vif)],
            capture_output=True, text=True, timeout=60).stdout
        if 'cookie=' in flows:
            out.append('flows: ' + flows)
    return out


def counter_lines(agent, uuid):
    return [int(m) for m in re.findall(r'^NF-INECHOS (\d+)', agent.console(uuid), re.M)]


def next_counter(agent, uuid, timeout=20):
    """The first InEchos value B prints after now."""
    seen = len(counter_lines(agent, uuid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = counter_lines(agent, uuid)
        if len(values) > seen:
            return values[-1]
        time.sleep(0.3)
    raise AssertionError('no new NF-INECHOS line on %s' % uuid)


def phase_delta(agent, a, b, phase):
    """Echo requests B received during A's phase."""
    agent.wait_console(a, 'NF-PHASE %s-start' % phase, timeout=120)
    c0 = next_counter(agent, b)
    agent.wait_console(a, 'NF-PHASE %s-end' % phase, timeout=60)
    c1 = next_counter(agent, b)
    return c1 - c0


def wire(tap, bridge):
    """Ethernet VIFs: the agent makes the tap; the wiring is someone
    else's (here: the test puts both taps on a bridge of its own)."""
    from compute_agent.vif import netdev
    netdev.ensure_bridge(bridge, 1500)
    run('ip', 'link', 'set', tap, 'master', bridge)


@pytest.mark.parametrize('vif_type,anti_spoofing', [
    ('bridge', True), ('bridge', False), ('ovs', True), ('ethernet', True)])
def test_anti_spoofing(agent, ovs_running, vif_type, anti_spoofing):
    bridge = agent.ovs_bridge if vif_type == 'ovs' else agent.fresh_link('cabr')
    net = fresh_net()
    ip_a, ip_b, spoof_ip = str(net[11]), str(net[12]), str(net[99])
    flt = {'anti_spoofing': anti_spoofing}
    vif_a = make_vif(vif_type, agent.fresh_link('tapca'), bridge=bridge, mtu=1500,
                     ip=ip_a, cidr=str(net), filter=flt)
    vif_b = make_vif(vif_type, agent.fresh_link('tapca'), bridge=bridge, mtu=1500,
                     ip=ip_b, cidr=str(net), filter=flt)
    b, rec_b = agent.spawn(label='nfb', network_info=[vif_b],
                           instance=agent.make_instance('nfb', metadata={'nf_count': '1'}))
    assert rec_b['filters'] == {vif_b['id']: {'anti_spoofing': anti_spoofing,
                                              'rules': None}}
    if vif_type == 'ethernet':
        wire(vif_b['devname'], bridge)
    agent.wait_console(b['uuid'], 'NF-INECHOS', timeout=90)
    a, _ = agent.spawn(label='nfa', network_info=[vif_a], instance=agent.make_instance(
        'nfa', metadata={'nf_spoof': ip_b, 'nf_spoof_ip': spoof_ip,
                         'nf_spoof_mac': random_mac()}))
    if vif_type == 'ethernet':
        wire(vif_a['devname'], bridge)
    if vif_type != 'ovs':
        xml = dom_xml(a['uuid'])
        assert "filter='ca-%s'" % vif_a['id'] in xml
    else:
        flows = run('ovs-ofctl', 'dump-flows', bridge, 'cookie=%s/-1' % openflow.cookie(vif_a))
        assert ('nw_src=%s' % ip_a in flows) == anti_spoofing, flows

    own = phase_delta(agent, a['uuid'], b['uuid'], 'own')
    spoofed_ip = phase_delta(agent, a['uuid'], b['uuid'], 'spoof-ip')
    spoofed_mac = phase_delta(agent, a['uuid'], b['uuid'], 'spoof-mac')
    assert own >= 3, own                      # A's own pings reach B
    if anti_spoofing:
        assert (spoofed_ip, spoofed_mac) == (0, 0)
    else:                                     # the control: they do arrive
        assert spoofed_ip >= 3 and spoofed_mac >= 3, (spoofed_ip, spoofed_mac)

    for inst, vif in ((a, vif_a), (b, vif_b)):
        agent.destroy(inst)
        assert gone(inst['uuid'])
        assert host_traces(vif, agent.ovs_bridge) == []


PROBE = re.compile(r'^NF-PROBE (\d+) (.*)$', re.M)


def probe_after(agent, uuid, expected, timeout=60, target_vif=None):
    """Wait until the two newest probe lines == expected, each printed after
    this call (the guest probes once a second; its counter starts again with
    each boot and the console log is appended to, so lines are told new by
    the time passed, not by their number or position). On failure the
    message shows what the host held for ``target_vif``, the probed VIF."""
    deadline = time.monotonic() + timeout
    time.sleep(3)
    last = None
    while time.monotonic() < deadline:
        found = PROBE.findall(agent.console(uuid, tail_lines=200))
        lines = [r.strip() for _, r in found]
        last = found[-3:]       # with their counters: did the guest go on probing?
        if len(lines) >= 2 and lines[-1] == lines[-2] == expected:
            return
        time.sleep(1)
    raise AssertionError('probes of %s never showed %r twice; last: %s\n%s'
                         % (uuid, expected, last, filter_state(agent, target_vif)))


def filter_state(agent, vif):
    """The host's filter of ``vif`` as text, for a failure message."""
    if vif is None:
        return ''
    out = []
    if vif['type'] == 'ovs':
        mac = vif['address'].lower()
        commands = [('ovs-vsctl', 'get', 'Interface', vif['devname'], 'ofport'),
                    ('ovs-ofctl', 'dump-flows', agent.ovs_bridge,
                     'cookie=%s/-1' % openflow.cookie(vif)),
                    ('ovs-appctl', 'dpctl/dump-flows'),
                    ('ovs-appctl', 'dpctl/dump-conntrack', 'zone=%d' % openflow.zone(vif))]
    else:
        mac = None
        commands = [('virsh', '-c', 'qemu:///system', 'nwfilter-dumpxml', 'ca-' + vif['id']),
                    ('ebtables', '-t', 'nat', '-L'), ('iptables-save',)]
    for argv in commands:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        if 'dpctl/dump-flows' in argv:        # only the probed VIF's datapath flows
            lines = [line for line in lines if mac in line]
        out.append('$ %s\n%s' % (' '.join(argv), '\n'.join(lines[-80:])))
    log = agent.log_file.read_text(errors='replace').splitlines()
    out.append('agent log:\n' + '\n'.join([
        line for line in log if 'security' in line or 'ofctl' in line
        or vif['id'] in line][-40:]))
    return '\n'.join(out)


@pytest.mark.parametrize('vif_type', ['bridge', 'ovs'])
def test_security_rules(agent, ovs_running, vif_type):
    bridge = agent.ovs_bridge if vif_type == 'ovs' else agent.fresh_link('cabr')
    net = fresh_net()
    ip_a, ip_b = str(net[11]), str(net[12])
    vif_a = make_vif(vif_type, agent.fresh_link('tapca'), bridge=bridge, mtu=1500,
                     ip=ip_a, cidr=str(net))
    vif_b = make_vif(vif_type, agent.fresh_link('tapca'), bridge=bridge, mtu=1500,
                     ip=ip_b, cidr=str(net), filter={'rules': []})
    b, _ = agent.spawn(label='nfb', network_info=[vif_b], instance=agent.make_instance(
        'nfb', metadata={'nf_listen': '2201 2202'}))
    agent.wait_console(b['uuid'], 'NF-LISTENING', timeout=90)
    a, _ = agent.spawn(label='nfa', network_info=[vif_a], instance=agent.make_instance(
        'nfa', metadata={'nf_probe': ip_b, 'nf_ports': '2201 2202'}))
    all_ok = 'icmp=ok tcp2201=ok tcp2202=ok'
    nothing = 'icmp=fail tcp2201=fail tcp2202=fail'
    # 3. allow_same_net_traffic=true (the default), rules []: A reaches B.
    probe_after(agent, a['uuid'], all_ok, timeout=120, target_vif=vif_b)
    dom_ids = {u: dom_id(u) for u in (a['uuid'], b['uuid'])}

    # 2. allow_same_net_traffic=false: nothing comes in.
    agent.stop()
    agent.write_config(DEFAULT={'allow_same_net_traffic': 'false'})
    agent.start()
    try:
        def update(rules):
            since = agent.reports.mark()
            rec = agent.call('update_security_rules', instance_uuid=b['uuid'],
                             vif_id=vif_b['id'], rules=rules)
            agent.wait_state(b['uuid'], 'active', None, since=since)
            states = [(r['vm_state'], r['task_state'])
                      for r in agent.reports.states(b['uuid'], since)]
            assert states == [('active', 'updating_security_rules'), ('active', None)]
            assert rec['filters'][vif_b['id']]['rules'] == rules
            return rec
        update([])
        probe_after(agent, a['uuid'], nothing, target_vif=vif_b)
        rules = [{'direction': 'ingress', 'ethertype': 'IPv4', 'protocol': 'icmp',
                  'port_range_min': None, 'port_range_max': None,
                  'remote_ip_prefix': ip_a + '/32'},
                 {'direction': 'ingress', 'ethertype': 'IPv4', 'protocol': 'tcp',
                  'port_range_min': 2201, 'port_range_max': 2201,
                  'remote_ip_prefix': ip_a + '/32'}]
        update(rules)
        probe_after(agent, a['uuid'], 'icmp=ok tcp2201=ok tcp2202=fail', target_vif=vif_b)
        # The rules are in the record and survive an agent restart.
        agent.restart()
        assert agent.get_info(b['uuid'])['filters'][vif_b['id']]['rules'] == rules
        # Both guests kept running all along (same QEMU processes).
        assert {u: dom_id(u) for u in dom_ids} == dom_ids
        # The rules survive a hard reboot (B boots again, A keeps probing)...
        agent.call('reboot', instance={'uuid': b['uuid']}, reboot_type='HARD')
        probe_after(agent, a['uuid'], 'icmp=ok tcp2201=ok tcp2202=fail', timeout=120,
                    target_vif=vif_b)
        # ... and a rescue: the rescued guest's NIC has the same filter.
        agent.call('rescue', instance={'uuid': b['uuid']})
        xml = dom_xml(b['uuid'])
        if vif_type == 'bridge':
            assert "filter='ca-%s'" % vif_b['id'] in xml
            assert "dstportstart='2201'" in on_libvirt(
                lambda c: c.nwfilterLookupByName('ca-' + vif_b['id']).XMLDesc(0))
        else:
            assert 'tp_dst=2201' in run('ovs-ofctl', 'dump-flows', bridge, 'cookie=%s/-1'
                                         % openflow.cookie(vif_b))
        agent.call('unrescue', instance={'uuid': b['uuid']})
        probe_after(agent, a['uuid'], 'icmp=ok tcp2201=ok tcp2202=fail', timeout=120,
                    target_vif=vif_b)
        update([])
        probe_after(agent, a['uuid'], nothing, target_vif=vif_b)
    finally:
        agent.stop()
        agent.write_config()
        agent.start()
    for inst, vif in ((a, vif_a), (b, vif_b)):
        agent.destroy(inst)
        assert gone(inst['uuid'])
        assert host_traces(vif, agent.ovs_bridge) == []


def test_bad_filter_creates_nothing(agent):
    bridge, tap = agent.fresh_link('cabr'), agent.fresh_link('tapca')
    vif = make_vif('bridge', tap, bridge=bridge, ip='10.5.5.5', cidr='10.5.5.0/24',
                   filter={'rules': [{'direction': 'ingress', 'protocol': 'tcp',
                                      'port_range_min': 80, 'port_range_max': 70}]})
    inst = agent.make_instance('nfbad')
    with pytest.raises(RemoteError) as err:
        agent.spawn(instance=inst, network_info=[vif])
    assert err.value.exc_type == 'InvalidRequest'
    assert 'network_info[0].filter.rules[0].port_range_min' in str(err.value)
    assert gone(inst['uuid'])
    assert host_traces(vif, agent.ovs_bridge) == []
    assert not agent.instance_dir(inst).exists()
