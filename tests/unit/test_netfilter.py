"""VIF filters without touching the host: checks, XML, flows, prerequisites.

The VIF ``filter`` object is checked as a case table (field named, nothing
else needed); the nwfilter documents are validated against libvirt's
nwfilter.rng and the guest XML with its <filterref> against domain.rng;
OpenFlow flows are checked as strings; prerequisites against a fake sysctl
directory and a real libvirt driver without nwfilter (test:///default).
"""

import copy
import functools
import os

import libvirt
import pytest
from lxml import etree

from compute_agent import exception
from compute_agent import validation
from compute_agent.netfilter import firewall
from compute_agent.netfilter import nwfilter
from compute_agent.netfilter import openflow
from compute_agent.netfilter import prereq
from compute_agent.virt import schema

try:
    from tests.unit import builder_fixtures as bf
except ImportError:
    import builder_fixtures as bf

UUID = '6f1b1c1e-1111-4222-8333-444455556666'
VIF_ID = '3f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b'


def vif(vif_type='bridge', flt=None, ips=('10.0.0.5',), cidr='10.0.0.0/24'):
    v = {'id': VIF_ID, 'address': 'FA:16:3E:12:34:56', 'type': vif_type,
         'devname': 'tap3f1a2b3c-4d',
         'network': {'bridge': 'br100', 'subnets': [
             {'cidr': cidr, 'ips': [{'address': ip} for ip in ips]}]}}
    if flt is not None:
        v['filter'] = flt
    return v


def spawn_args(flt):
    return {'instance': {'uuid': UUID, 'name': 'inst-1',
                         'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 1}},
            'image_meta': {'id': 'img'}, 'network_info': [vif(flt=flt)]}


def rule(**kw):
    r = {'direction': 'ingress', 'ethertype': 'IPv4', 'protocol': 'tcp',
         'port_range_min': 22, 'port_range_max': 22,
         'remote_ip_prefix': '10.1.0.0/16'}
    r.update(kw)
    return r


# -- 1. the filter object: a case table ------------------------------------------

F = 'network_info[0].filter'
BAD_FILTERS = {
    # case: (filter, field named, text in the reason)
    'not-an-object': ('yes', F, 'object'),
    'anti-spoofing-not-bool': ({'anti_spoofing': 'no'}, F + '.anti_spoofing', 'boolean'),
    'rules-not-list': ({'rules': {}}, F + '.rules', 'list'),
    'direction': ({'rules': [rule(direction='in')]}, F + '.rules[0].direction', 'ingress'),
    'direction-missing': ({'rules': [{'ethertype': 'IPv4'}]}, F + '.rules[0].direction',
                          'required'),
    'ethertype': ({'rules': [rule(ethertype='ipv4')]}, F + '.rules[0].ethertype', 'IPv4'),
    'protocol': ({'rules': [rule(protocol='sctp')]}, F + '.rules[0].protocol', 'tcp'),
    'bad-cidr': ({'rules': [rule(), rule(remote_ip_prefix='10.0.0.300/8')]},
                 F + '.rules[1].remote_ip_prefix', 'CIDR'),
    'cidr-host-bits': ({'rules': [rule(remote_ip_prefix='10.0.0.1/8')]},
                       F + '.rules[0].remote_ip_prefix', 'CIDR'),
    'cidr-wrong-family': ({'rules': [rule(remote_ip_prefix='fd00::/64')]},
                          F + '.rules[0].remote_ip_prefix', 'not an IPv4'),
    'cidr-v4-for-v6': ({'rules': [rule(ethertype='IPv6')]},
                       F + '.rules[0].remote_ip_prefix', 'not an IPv6'),
    'port-zero': ({'rules': [rule(port_range_min=0)]}, F + '.rules[0].port_range_min',
                  '1 and 65535'),
    'port-too-big': ({'rules': [rule(port_range_max=65536)]},
                     F + '.rules[0].port_range_max', '1 and 65535'),
    'port-not-int': ({'rules': [rule(port_range_min='22')]},
                     F + '.rules[0].port_range_min', 'integer'),
    'port-range-reversed': ({'rules': [rule(), rule(), rule(port_range_min=80,
                                                            port_range_max=79)]},
                            F + '.rules[2].port_range_min', 'greater than'),
    'ports-for-icmp': ({'rules': [rule(protocol='icmp')]},
                       F + '.rules[0].port_range_min', 'tcp or udp'),
    'ports-for-any': ({'rules': [rule(protocol=None, port_range_min=None)]},
                      F + '.rules[0].port_range_max', 'tcp or udp'),
}


@pytest.mark.parametrize('case', sorted(BAD_FILTERS))
def test_bad_filter_is_invalid_request_naming_the_field(case):
    flt, field, text = BAD_FILTERS[case]
    with pytest.raises(exception.InvalidRequest) as err:
        validation.validate('spawn', spawn_args(flt))
    assert field in err.value.message and text in err.value.message, err.value.message


GOOD_FILTERS = {
    'absent': None,
    'null': None,
    'anti-spoofing-only': {'anti_spoofing': True, 'rules': None},
    'off': {'anti_spoofing': False},
    'empty-rules': {'rules': []},
    'all-kinds': {'rules': [
        rule(), rule(direction='egress', protocol='udp', port_range_min=53,
                     port_range_max=53, remote_ip_prefix=None),
        rule(protocol='icmp', port_range_min=None, port_range_max=None),
        rule(protocol=None, port_range_min=None, port_range_max=None,
             remote_ip_prefix=None),
        rule(ethertype='IPv6', remote_ip_prefix='fd00::/64'),
        {'direction': 'ingress'}]},
}


@pytest.mark.parametrize('case', sorted(GOOD_FILTERS))
def test_good_filter_is_accepted(case):
    args = spawn_args(GOOD_FILTERS[case])
    if case == 'null':
        args['network_info'][0]['filter'] = None
    validation.validate('spawn', args)


def test_rule_defaults_are_filled_in():
    out = validation.validate('spawn', spawn_args({'rules': [{'direction': 'egress'}]}))
    assert out['network_info'][0]['filter'] == {
        'anti_spoofing': True, 'rules': [{
            'direction': 'egress', 'ethertype': 'IPv4', 'protocol': None,
            'port_range_min': None, 'port_range_max': None,
            'remote_ip_prefix': None}]}


@pytest.mark.parametrize('rules,field', [
    ([rule(port_range_min=9, port_range_max=8)], 'rules[0].port_range_min'),
    ('all', 'rules'),
])
def test_update_security_rules_checks_rules(rules, field):
    with pytest.raises(exception.InvalidRequest) as err:
        validation.validate('update_security_rules', {
            'instance_uuid': UUID, 'vif_id': VIF_ID, 'rules': rules})
    assert err.value.message.startswith('Invalid request: ' + field) or \
        (field + ':') in err.value.message, err.value.message


def test_update_security_rules_needs_rules_argument():
    with pytest.raises(exception.InvalidRequest) as err:
        validation.validate('update_security_rules',
                            {'instance_uuid': UUID, 'vif_id': VIF_ID})
    assert 'rules' in err.value.message


# -- 2. nwfilter documents and the interface's <filterref> -------------------------

@functools.lru_cache(maxsize=None)
def nwfilter_rng():
    return etree.RelaxNG(etree.parse(os.path.join(schema.SCHEMA_DIR, 'nwfilter.rng')))


def assert_valid_filter(node):
    rng = nwfilter_rng()
    assert rng.validate(node), (rng.error_log, etree.tostring(node))


FILTER_CASES = {
    'default': None,
    'off': {'anti_spoofing': False},
    'rules-empty': {'rules': []},
    'rules': GOOD_FILTERS['all-kinds'],
    'egress-only': {'anti_spoofing': False, 'rules': [
        rule(direction='egress', remote_ip_prefix='10.9.0.0/16')]},
}


@pytest.mark.parametrize('case', sorted(FILTER_CASES))
@pytest.mark.parametrize('same_net', [True, False])
def test_nwfilter_xml_is_valid(case, same_net):
    v = validation.validate('spawn', spawn_args(FILTER_CASES[case]))['network_info'][0]
    node = nwfilter.filter_xml(v, same_net)
    assert_valid_filter(node)
    assert node.get('name') == 'ca-' + VIF_ID
    refs = [r.get('filter') for r in node.findall('filterref')]
    assert refs == ([] if case in ('off', 'egress-only') else ['clean-traffic'])
    rules = node.findall('rule')
    if case in ('default', 'off'):
        assert rules == []
        return
    drops = {(r.get('direction'), r[0].tag) for r in rules if r.get('action') == 'drop'}
    assert ('in', 'all') in drops and ('in', 'all-ipv6') in drops
    egress = case in ('rules', 'egress-only')
    assert (('out', 'all') in drops) == egress
    same = [r for r in rules if r[0].get('srcipaddr') == '10.0.0.0']
    assert bool(same) == same_net


def test_nwfilter_rule_details():
    v = validation.validate('spawn', spawn_args({'rules': [
        rule(port_range_min=8000, port_range_max=8080),
        rule(direction='egress', protocol='udp', port_range_min=53,
             port_range_max=53, remote_ip_prefix='8.8.8.0/24')]}))['network_info'][0]
    node = nwfilter.filter_xml(v, False)
    tcp = node.xpath("rule[@action='accept'][@direction='in']/tcp")
    assert [(t.get('srcipaddr'), t.get('srcipmask'), t.get('dstportstart'),
             t.get('dstportend')) for t in tcp] == [('10.1.0.0', '16', '8000', '8080')]
    udp = node.xpath("rule[@action='accept'][@direction='out']/udp[@dstipaddr]")
    assert [(u.get('dstipaddr'), u.get('dstipmask'), u.get('dstportstart'))
            for u in udp] == [('8.8.8.0', '24', '53')]
    # DHCP both ways, before the drops.
    assert node.xpath("rule[@direction='in']/udp[@srcportstart='67'][@dstportstart='68']")


def test_filterref_in_domain_xml_is_valid():
    conf = bf.make_conf()
    v = bf.bridge_vif(1)
    v['network']['subnets'] = [{'cidr': '10.0.0.0/24', 'ips': [
        {'address': '10.0.0.5'}, {'address': '10.0.0.6'}, {'address': 'fd00::5'}]}]
    e = bf.ethernet_vif(3)
    o = bf.ovs_vif(2)
    plan = bf.build(conf, bf.make_request(network_info=[v, o, e]))
    schema.validate_domain(plan.domain.format())
    ifaces = plan.domain.format().findall('devices/interface')
    ref = ifaces[0].find('filterref')
    assert ref.get('filter') == 'ca-' + v['id']
    assert [(p.get('name'), p.get('value')) for p in ref] == [
        ('MAC', v['address']), ('IP', '10.0.0.5'), ('IP', '10.0.0.6')]
    assert ifaces[1].find('filterref') is None          # OVS: OpenFlow instead
    assert ifaces[2].find('filterref').get('filter') == 'ca-' + e['id']
    assert [(p.get('name'), p.get('value')) for p in ifaces[2].find('filterref')] == [
        ('MAC', e['address']), ('IP', '0.0.0.0')]      # no ips: only DHCP


def test_filterref_round_trips_through_the_model():
    from compute_agent.virt import config
    ref = firewall.filterref(vif())
    iface = config.Interface(type='bridge', mac='fa:16:3e:12:34:56')
    iface.filterref = ref
    again = config.Interface(node=etree.fromstring(etree.tostring(iface.format())))
    assert again.filterref.filter == 'ca-' + VIF_ID
    assert [(p.name, p.value) for p in again.filterref.parameters] == [
        ('MAC', 'fa:16:3e:12:34:56'), ('IP', '10.0.0.5')]


# -- 2. OpenFlow flows ------------------------------------------------------------

def test_openflow_flows_and_cookie():
    v = vif('ovs', ips=('10.0.0.5', '10.0.0.6'))
    c = openflow.cookie(v)
    assert c.startswith('0xca') and len(c) == 18
    assert openflow.cookie(dict(v, id='other')) != c
    flows = openflow.flows(v, 7)
    assert all(f.startswith('cookie=%s,table=0,in_port=7' % c) for f in flows)
    assert sum('arp,arp_spa=10.0.0.' in f for f in flows) == 2
    assert sum(',ip,nw_src=10.0.0.' in f for f in flows) == 2
    assert any('nw_src=0.0.0.0,tp_src=68,tp_dst=67' in f for f in flows)
    assert flows[-1].endswith('priority=90,actions=drop')
    assert all('dl_src=fa:16:3e:12:34:56' in f for f in flows[:-1])


# -- 2/4. host prerequisites ------------------------------------------------------

def sysctls(tmp_path, ipt='1', ip6t='1'):
    for name, value in zip(prereq.BRIDGE_NF, (ipt, ip6t)):
        (tmp_path / name).write_text(value + '\n')
    return str(tmp_path)


def test_bridge_nf_call_ok(tmp_path):
    assert prereq.bridge_nf_call(False, sysctls(tmp_path)) is None


def test_bridge_nf_call_missing_is_named(tmp_path):
    reason = prereq.bridge_nf_call(False, sysctls(tmp_path, ipt='0'))
    assert 'net.bridge.bridge-nf-call-iptables is 0' in reason
    assert 'set_bridge_nf_call' in reason


def test_bridge_nf_call_set_when_allowed(tmp_path):
    d = sysctls(tmp_path, ipt='0', ip6t='0')
    assert prereq.bridge_nf_call(True, d) is None
    assert (tmp_path / 'bridge-nf-call-iptables').read_text().strip() == '1'


def test_bridge_nf_call_no_module(tmp_path):
    assert 'br_netfilter' in prereq.bridge_nf_call(True, str(tmp_path / 'none'))


def test_missing_nwfilter_driver_refuses_the_vif():
    """test:///default is a real libvirt driver without nwfilter support."""
    conn = libvirt.open('test:///default')
    try:
        fw = firewall.Firewall(bf.make_conf(), lambda fn: fn(conn))
        with pytest.raises(exception.VifPlugFailed) as err:
            fw.prepare({'uuid': UUID}, [vif()])
        assert VIF_ID in err.value.message
        assert 'nwfilter' in err.value.message
        fw.prepare({'uuid': UUID}, [vif('ovs')])       # OVS: no nwfilter needed
    finally:
        conn.close()


def test_ovs_vif_with_ipv6_rules_is_refused():
    fw = firewall.Firewall(bf.make_conf(), None)
    fw.check(vif('ovs', flt={'rules': [rule()]}))
    with pytest.raises(exception.VifPlugFailed) as err:
        fw.check(vif('ovs', flt={'rules': [rule(ethertype='IPv6',
                                                remote_ip_prefix=None)]}))
    assert 'IPv6' in err.value.message and 'not implemented' in err.value.message


@pytest.mark.parametrize('lo,hi', [(22, 22), (8000, 8080), (1, 65535), (1023, 1025),
                                   (65535, 65535)])
def test_port_masks_cover_exactly_the_range(lo, hi):
    covered = set()
    for value, mask in openflow.port_masks(lo, hi):
        block = {p for p in range(65536) if p & mask == value}
        assert not covered & block
        covered |= block
    assert covered == set(range(lo, hi + 1))


def test_openflow_rules_flows():
    v = vif('ovs', flt={'rules': [
        rule(remote_ip_prefix='10.0.0.11/32'),
        rule(direction='egress', protocol='udp', port_range_min=53,
             port_range_max=53, remote_ip_prefix=None)]})
    z = openflow.zone(v)
    flows = openflow.flows(v, 7, allow_same_net=False)
    t0 = [f for f in flows if ',table=0,' in f]
    assert any('ip,nw_src=10.0.0.5,actions=ct(table=71,zone=%d)' % z in f for f in t0)
    ing = [f for f in flows if ',table=72,' in f]
    assert [f for f in ing if 'ct_state=+trk+new' in f] == [
        'cookie=%s,table=72,dl_dst=fa:16:3e:12:34:56,priority=50,ct_state=+trk+new,'
        'tcp,nw_src=10.0.0.11/32,tp_dst=22,actions=ct(commit,zone=%d),NORMAL'
        % (openflow.cookie(v), z)]
    assert ing[-1].endswith('priority=10,actions=drop')
    eg_new = [f for f in flows if ',table=71,' in f and '+new' in f]
    assert len(eg_new) == 1 and 'udp,tp_dst=53' in eg_new[0]
    same = openflow.flows(v, 7, allow_same_net=True)
    assert any('ip,nw_src=10.0.0.0/24' in f for f in same)
    # rules null: only anti-spoofing, straight on to the dispatch table
    plain = openflow.flows(vif('ovs'), 7)
    assert not any('ct(' in f for f in plain)


def test_update_rules_unknown_vif_is_invalid():
    fw = firewall.Firewall(bf.make_conf(), None)
    with pytest.raises(exception.InvalidRequest) as err:
        fw.update_rules([vif()], 'nope', [], running=True)
    assert 'vif_id' in err.value.message


def test_describe_gives_each_vifs_filter():
    ni = [vif(), dict(vif('ovs', flt={'anti_spoofing': False}), id='p2')]
    before = copy.deepcopy(ni)
    assert firewall.describe(ni) == {
        VIF_ID: {'anti_spoofing': True, 'rules': None},
        'p2': {'anti_spoofing': False, 'rules': None}}
    assert ni == before


@pytest.mark.parametrize('datapath', ['netdev', 'system'])
def test_ovs_on_userspace_datapath_gets_no_checksum_offload(datapath):
    conf = bf.make_conf(overrides={'ovs.datapath_type': datapath})
    plan = bf.build(conf, bf.make_request(network_info=[bf.ovs_vif(2), bf.bridge_vif(1)]))
    schema.validate_domain(plan.domain.format())
    ovs, br = plan.domain.format().findall('devices/interface')
    assert ovs.xpath('string(driver/host/@csum)') == ('off' if datapath == 'netdev' else '')
    assert br.find('driver') is None
