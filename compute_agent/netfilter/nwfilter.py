"""libvirt nwfilters for bridge and ethernet VIFs (mechanism).

Each filtered VIF gets one agent-owned filter, ``ca-<vif id>``, holding:

* ``clean-traffic`` (libvirt's: MAC, IP and ARP anti-spoofing in ebtables)
  when ``anti_spoofing`` is on; the interface's ``<filterref>`` passes the
  parameters ``MAC`` (the VIF's address) and ``IP`` (each of its ``ips``);
* when ``rules`` is a list, iptables-layer rules. libvirt makes an accept
  rule stateful (NEW,ESTABLISHED one way, ESTABLISHED back), so replies to
  the guest's own connections come in without a rule of their own.

Redefining the filter makes libvirt re-apply it to every running guest that
references it: that is how rules change live.
"""

import ipaddress

import libvirt
from lxml import etree

from compute_agent.netfilter import spec
from compute_agent.virt import config

PREFIX = 'ca-'
BASE_FILTER = 'clean-traffic'
# Lower runs first; libvirt accepts -1000..1000.
ACCEPT, DHCP, DEFAULT_DROP = 500, 400, 900
_L4 = {4: {'tcp': 'tcp', 'udp': 'udp', 'icmp': 'icmp', None: 'all'},
       6: {'tcp': 'tcp-ipv6', 'udp': 'udp-ipv6', 'icmp': 'icmpv6',
           None: 'all-ipv6'}}


def filter_name(vif):
    return PREFIX + vif['id']


def filterref(vif):
    """The interface's ``<filterref>`` for ``vif``.

    Every bridge/ethernet VIF gets one, even with nothing to filter (the
    filter is then empty), so update_security_rules can always act live.
    """
    ref = config.FilterRef(filter=filter_name(vif))
    ref.add('parameters', config.FilterParameter(name='MAC',
                                                 value=vif['address'].lower()))
    # No IPv4 address: 0.0.0.0 leaves only DHCP (libvirt would otherwise
    # learn whatever address the guest sends from first).
    for ip in spec.addresses(vif, 4) or ['0.0.0.0']:
        ref.add('parameters', config.FilterParameter(name='IP', value=ip))
    return ref


def _rule(parent, action, direction, priority, proto, **attrs):
    rule = etree.SubElement(parent, 'rule', action=action, direction=direction,
                            priority=str(priority))
    etree.SubElement(rule, proto, **{k: str(v) for k, v in attrs.items()
                                     if v is not None})
    return rule


def _match(version, protocol, direction, prefix, lo, hi):
    """(element, attrs) of one rule; the remote end is src in, dst out."""
    attrs = {}
    if prefix is not None:
        net = ipaddress.ip_network(prefix)
        end = 'src' if direction == 'in' else 'dst'
        attrs[end + 'ipaddr'] = str(net.network_address)
        attrs[end + 'ipmask'] = str(net.prefixlen)
    if lo is not None:
        attrs['dstportstart'], attrs['dstportend'] = lo, hi
    return _L4[version][protocol], attrs


def filter_xml(vif, allow_same_net):
    """The ``<filter>`` document for ``vif`` (an lxml element)."""
    flt = spec.effective(vif)
    root = etree.Element('filter', name=filter_name(vif), chain='root')
    if flt['anti_spoofing']:
        etree.SubElement(root, 'filterref', filter=BASE_FILTER)
    rules = flt['rules']
    if rules is None:
        return root
    rules = [spec.normalize_rule(r) for r in rules]
    egress = [r for r in rules if r['direction'] == 'egress']
    for version in (4, 6):
        # DHCP both ways (the reply is broadcast, so no conntrack match).
        if version == 4:
            _rule(root, 'accept', 'out', DHCP, 'udp', srcportstart=68,
                  dstportstart=67)
            _rule(root, 'accept', 'in', DHCP, 'udp', srcportstart=67,
                  dstportstart=68)
        for r in rules:
            if spec.ETHERTYPES[r['ethertype']] != version:
                continue
            direction = 'in' if r['direction'] == 'ingress' else 'out'
            proto, attrs = _match(version, r['protocol'], direction,
                                  r['remote_ip_prefix'], r['port_range_min'],
                                  r['port_range_max'])
            _rule(root, 'accept', direction, ACCEPT, proto, **attrs)
        if allow_same_net:
            for net in spec.subnets(vif, version):
                proto, attrs = _match(version, None, 'in', str(net), None, None)
                _rule(root, 'accept', 'in', ACCEPT, proto, **attrs)
        if not egress:
            _rule(root, 'accept', 'out', ACCEPT, _L4[version][None])
        else:
            _rule(root, 'drop', 'out', DEFAULT_DROP, _L4[version][None])
        _rule(root, 'drop', 'in', DEFAULT_DROP, _L4[version][None])
    return root


def needs_iptables(vif):
    """L3/L4 rules act only with net.bridge.bridge-nf-call-iptables=1."""
    return spec.effective(vif)['rules'] is not None


# -- libvirt calls -----------------------------------------------------------

def define(conn, vif, allow_same_net):
    """Create or replace the VIF's filter (running guests get it at once).

    A redefinition must carry the filter's uuid: libvirt refuses a filter
    of the same name with another (a new, generated) uuid.
    """
    node = filter_xml(vif, allow_same_net)
    try:
        existing = conn.nwfilterLookupByName(node.get('name'))
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_NWFILTER:
            raise
    else:
        etree.SubElement(node, 'uuid').text = existing.UUIDString()
        node.insert(0, node[-1])       # <uuid> first, as libvirt writes it
    conn.nwfilterDefineXML(etree.tostring(node, encoding='unicode'))


def undefine(conn, name):
    """Remove a filter; a missing one is fine. Only ``ca-`` filters."""
    if not name.startswith(PREFIX):
        raise ValueError('not an agent filter: %r' % name)
    try:
        conn.nwfilterLookupByName(name).undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_NWFILTER:
            raise


def list_names(conn):
    """Names of every agent-owned filter on the host."""
    return sorted(n for n in conn.listNWFilters() if n.startswith(PREFIX))
