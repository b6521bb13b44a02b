"""VIF filters on Open vSwitch ports: OpenFlow rules (mechanism).

ebtables does not see OVS ports, so each filtered OVS VIF gets flows on the
integration bridge, all carrying the VIF's cookie (``0xca`` + 56 bits of
sha256(vif id)) so they can be listed and removed together. Tables:

* 0 (from the port): anti-spoofing. From the port with the VIF's MAC: ARP
  whose sender is one of its ``ips``; DHCP requests from 0.0.0.0 (-> NORMAL);
  IPv4 from one of its ``ips`` (-> table 71 through conntrack when the VIF
  has rules, else -> table 70); anything else from the port is dropped.
* 71 (egress state, zone of the VIF): established/related and DHCP pass;
  new connections pass (and are committed) when no egress rule exists, else
  only what an egress rule allows; the rest is dropped. -> table 70.
* 70 (to a port): IPv4 to the MAC of a VIF with rules -> ct in that VIF's
  zone -> table 72; everything else NORMAL (shared base flow).
* 72 (ingress state): established/related, DHCP replies, what an ingress
  rule allows and (allow_same_net_traffic) the VIF's subnets pass; the rest
  of IPv4 to the VIF is dropped.

Shared base flows (cookie ``0xca00000000000000``, never removed: they name
no VIF): table 0 priority 1 -> table 70, table 70 priority 0 -> NORMAL, so
traffic from unfiltered ports also meets the ingress checks. Conntrack works
with the userspace (netdev) datapath too. IPv6 rules are not implemented on
OVS (refused by the firewall); a VIF with anti-spoofing sends no IPv6.

The port's OpenFlow number changes each time libvirt re-adds the port (every
guest start), so the flows are replaced after every start (post_start) and
removed on unplug.
"""

import hashlib
import ipaddress
import subprocess

from compute_agent.netfilter import spec

OFCTL = 'ovs-ofctl'
BASE_COOKIE = '0xca00000000000000'
T_TO, T_EGRESS, T_INGRESS = 70, 71, 72
HIGH, ALLOW, RULE, DROP_ALL = 100, 95, 50, 10
SPOOF_DROP = 90


class OpenFlowError(Exception):
    pass


def cookie(vif):
    digest = hashlib.sha256(vif['id'].encode()).hexdigest()
    return '0xca' + digest[:14]


def zone(vif):
    """The VIF's conntrack zone (1..65000)."""
    return 1 + int(cookie(vif), 16) % 65000


def port_masks(lo, hi):
    """OpenFlow (value, mask) pairs covering the port range lo..hi."""
    out = []
    while lo <= hi:
        size = 1
        while lo % (size * 2) == 0 and lo + size * 2 - 1 <= hi and size < 65536:
            size *= 2
        out.append((lo, 0xffff & ~(size - 1)))
        lo += size
    return out


def _rule_matches(rule, direction):
    """Match strings (without ct_state) for one normalized rule."""
    proto = rule['protocol'] or 'ip'
    base = [proto]
    prefix = rule['remote_ip_prefix']
    if prefix is not None:
        net = ipaddress.ip_network(prefix)
        field = 'nw_src' if direction == 'ingress' else 'nw_dst'
        base.append('%s=%s' % (field, net))
    if rule['port_range_min'] is None:
        return [','.join(base)]
    return [','.join(base + ['tp_dst=%d' % v if m == 0xffff
                             else 'tp_dst=0x%x/0x%x' % (v, m)])
            for v, m in port_masks(rule['port_range_min'], rule['port_range_max'])]


def base_flows():
    return ['cookie=%s,table=0,priority=1,actions=resubmit(,%d)' % (BASE_COOKIE, T_TO),
            'cookie=%s,table=%d,priority=0,actions=NORMAL' % (BASE_COOKIE, T_TO)]


def flows(vif, ofport, allow_same_net=True):
    """The flow strings (for ``ovs-ofctl add-flows``) of one VIF."""
    flt = spec.effective(vif)
    c, mac, z = cookie(vif), vif['address'].lower(), zone(vif)
    rules = flt['rules']
    nxt = ('ct(table=%d,zone=%d)' % (T_EGRESS, z) if rules is not None
           else 'resubmit(,%d)' % T_TO)
    port = 'cookie=%s,table=0,in_port=%d' % (c, ofport)
    out = []
    if flt['anti_spoofing']:
        src = '%s,dl_src=%s' % (port, mac)
        for ip in spec.addresses(vif, 4):
            out.append('%s,priority=%d,arp,arp_spa=%s,arp_sha=%s,actions=NORMAL'
                       % (src, HIGH, ip, mac))
            out.append('%s,priority=%d,ip,nw_src=%s,actions=%s'
                       % (src, HIGH, ip, nxt))
        out.append('%s,priority=%d,udp,nw_src=0.0.0.0,tp_src=68,tp_dst=67,'
                   'actions=NORMAL' % (src, HIGH))
        out.append('%s,priority=%d,actions=drop' % (port, SPOOF_DROP))
    elif rules is not None:
        out.append('%s,priority=%d,ip,actions=%s' % (port, ALLOW, nxt))
    if rules is None:
        return out
    rules = [spec.normalize_rule(r) for r in rules]
    commit = 'ct(commit,zone=%d)' % z
    # egress state
    eg = 'cookie=%s,table=%d,in_port=%d' % (c, T_EGRESS, ofport)
    go_on = 'resubmit(,%d)' % T_TO
    for state in ('+trk+est', '+trk+rel'):
        out.append('%s,priority=%d,ct_state=%s,ip,actions=%s' % (eg, HIGH, state, go_on))
    out.append('%s,priority=%d,udp,tp_src=68,tp_dst=67,actions=%s' % (eg, HIGH, go_on))
    egress = [r for r in rules if r['direction'] == 'egress']
    matches = ([m for r in egress for m in _rule_matches(r, 'egress')]
               if egress else ['ip'])
    for m in matches:
        out.append('%s,priority=%d,ct_state=+trk+new,%s,actions=%s,%s'
                   % (eg, RULE, m, commit, go_on))
    out.append('%s,priority=%d,actions=drop' % (eg, DROP_ALL))
    # to the VIF: through its zone
    out.append('cookie=%s,table=%d,priority=%d,ip,dl_dst=%s,'
               'actions=ct_clear,ct(table=%d,zone=%d)'
               % (c, T_TO, HIGH, mac, T_INGRESS, z))
    # ingress state
    ing = 'cookie=%s,table=%d,dl_dst=%s' % (c, T_INGRESS, mac)
    for state in ('+trk+est', '+trk+rel'):
        out.append('%s,priority=%d,ct_state=%s,ip,actions=NORMAL' % (ing, HIGH, state))
    out.append('%s,priority=%d,udp,tp_src=67,tp_dst=68,actions=NORMAL' % (ing, HIGH))
    matches = [m for r in rules if r['direction'] == 'ingress'
               for m in _rule_matches(r, 'ingress')]
    if allow_same_net:
        matches += ['ip,nw_src=%s' % net for net in spec.subnets(vif, 4)]
    for m in matches:
        out.append('%s,priority=%d,ct_state=+trk+new,%s,actions=%s,NORMAL'
                   % (ing, RULE, m, commit))
    out.append('%s,priority=%d,actions=drop' % (ing, DROP_ALL))
    return out


class OpenFlow:
    def __init__(self, timeout=30, binary=OFCTL):
        self.timeout = timeout
        self.binary = binary

    def _run(self, *args, stdin=None):
        argv = [self.binary, '--timeout=%d' % self.timeout, *args]
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True,
                                  text=True, check=False,
                                  timeout=self.timeout + 5)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OpenFlowError('%s: %s' % (' '.join(argv), e)) from None
        if proc.returncode != 0:
            raise OpenFlowError('%s failed: %s' % (' '.join(argv),
                                                   proc.stderr.strip()))
        return proc.stdout

    def replace(self, bridge, vif, ofport, allow_same_net=True):
        """Install the VIF's flows (and the shared base flows), dropping its
        older ones first."""
        self.remove(bridge, vif)
        self._run('add-flows', bridge, '-', stdin='\n'.join(
            base_flows() + flows(vif, ofport, allow_same_net)) + '\n')

    def remove(self, bridge, vif):
        self._run('del-flows', bridge, 'cookie=%s/-1' % cookie(vif))

    def dump(self, bridge, vif):
        """The VIF's flows as ovs-ofctl prints them (for checks)."""
        out = self._run('dump-flows', bridge, 'cookie=%s/-1' % cookie(vif))
        return [line.strip() for line in out.splitlines()
                if 'cookie=' in line]
