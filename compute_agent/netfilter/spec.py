"""The VIF ``filter`` object: checks beyond the JSON schema, and defaults.

The schema (``compute_agent.schemas``) checks types and enums; the checks
that relate fields to each other live here: a port range only for tcp/udp
with min <= max, a ``remote_ip_prefix`` of the rule's ethertype. Errors are
``InvalidRequest`` naming the field, e.g.
``network_info[0].filter.rules[2].port_range_min``.
"""

import ipaddress

from compute_agent import exception

ETHERTYPES = {'IPv4': 4, 'IPv6': 6}
PORT_PROTOCOLS = ('tcp', 'udp')


def check_rules(rules, field, uuid=None):
    """Raise InvalidRequest unless the (schema-valid) ``rules`` make sense."""
    for i, rule in enumerate(rules or ()):
        where = '%s[%d]' % (field, i)
        lo, hi = rule.get('port_range_min'), rule.get('port_range_max')
        if (lo is not None or hi is not None) and \
                rule.get('protocol') not in PORT_PROTOCOLS:
            name = 'port_range_min' if lo is not None else 'port_range_max'
            raise exception.InvalidRequest(
                '%s.%s' % (where, name),
                'a port range needs protocol tcp or udp', uuid=uuid)
        if lo is not None and hi is not None and lo > hi:
            raise exception.InvalidRequest(
                '%s.port_range_min' % where,
                'must not be greater than port_range_max', uuid=uuid)
        prefix = rule.get('remote_ip_prefix')
        if prefix is not None:
            net = ipaddress.ip_network(prefix)   # the schema checked the shape
            if net.version != ETHERTYPES[rule['ethertype']]:
                raise exception.InvalidRequest(
                    '%s.remote_ip_prefix' % where,
                    'is not an %s network' % rule['ethertype'], uuid=uuid)


def check_network_info(network_info, uuid=None, field='network_info'):
    for i, vif in enumerate(network_info or ()):
        flt = vif.get('filter') or {}
        check_rules(flt.get('rules'), '%s[%d].filter.rules' % (field, i), uuid)


def effective(vif):
    """``{'anti_spoofing': bool, 'rules': list|None}`` of a VIF (defaults)."""
    flt = vif.get('filter') or {}
    anti = flt.get('anti_spoofing')
    return {'anti_spoofing': True if anti is None else bool(anti),
            'rules': flt.get('rules')}


def enabled(vif):
    """Whether the VIF needs any filter on the host."""
    flt = effective(vif)
    return flt['anti_spoofing'] or flt['rules'] is not None


def normalize_rule(rule):
    """A rule with every key present (null where absent)."""
    lo, hi = rule.get('port_range_min'), rule.get('port_range_max')
    if lo is not None and hi is None:
        hi = lo
    if hi is not None and lo is None:
        lo = hi
    return {'direction': rule['direction'], 'ethertype': rule['ethertype'],
            'protocol': rule.get('protocol'), 'port_range_min': lo,
            'port_range_max': hi,
            'remote_ip_prefix': rule.get('remote_ip_prefix')}


def addresses(vif, version=None):
    """The VIF's own ``ips`` (strings), optionally of one IP version."""
    out = []
    for subnet in (vif.get('network') or {}).get('subnets') or ():
        for ip in subnet.get('ips') or ():
            addr = ipaddress.ip_address(ip['address'])
            if version is None or addr.version == version:
                out.append(str(addr))
    return out


def subnets(vif, version=None):
    """The VIF's subnets as ipaddress networks."""
    out = []
    for subnet in (vif.get('network') or {}).get('subnets') or ():
        net = ipaddress.ip_network(subnet['cidr'])
        if version is None or net.version == version:
            out.append(net)
    return out
