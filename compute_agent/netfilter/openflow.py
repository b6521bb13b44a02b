"""Anti-spoofing for Open vSwitch ports: OpenFlow rules (mechanism).

ebtables does not see OVS ports, so each filtered OVS VIF gets flows in
table 0 of the integration bridge, all carrying the VIF's cookie
(``0xca`` + 56 bits of sha256(vif id)) so they can be listed and removed
together:

* priority 100: from the port, with the VIF's MAC: ARP whose sender is one
  of its ``ips`` and its MAC; IPv4 from one of its ``ips``; DHCP requests
  from 0.0.0.0 -> NORMAL;
* priority 90: anything else from the port -> drop.

The port's OpenFlow number changes each time libvirt re-adds the port (every
guest start), so the flows are replaced after every start (post_start) and
removed on unplug. Security rules on OVS ports are not implemented: a VIF
with ``rules`` is refused rather than left unfiltered.
"""

import hashlib
import subprocess

from compute_agent.netfilter import spec

OFCTL = 'ovs-ofctl'
ALLOW, DROP = 100, 90


class OpenFlowError(Exception):
    pass


def cookie(vif):
    digest = hashlib.sha256(vif['id'].encode()).hexdigest()
    return '0xca' + digest[:14]


def flows(vif, ofport):
    """The flow strings (for ``ovs-ofctl add-flows``) of one VIF."""
    c, mac = cookie(vif), vif['address'].lower()
    base = 'cookie=%s,table=0,in_port=%d,dl_src=%s' % (c, ofport, mac)
    out = []
    for ip in spec.addresses(vif, 4):
        out.append('%s,priority=%d,arp,arp_spa=%s,arp_sha=%s,actions=NORMAL'
                   % (base, ALLOW, ip, mac))
        out.append('%s,priority=%d,ip,nw_src=%s,actions=NORMAL'
                   % (base, ALLOW, ip))
    out.append('%s,priority=%d,udp,nw_src=0.0.0.0,tp_src=68,tp_dst=67,'
               'actions=NORMAL' % (base, ALLOW))
    out.append('cookie=%s,table=0,in_port=%d,priority=%d,actions=drop'
               % (c, ofport, DROP))
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

    def replace(self, bridge, vif, ofport):
        """Install the VIF's flows, dropping its older ones first."""
        self.remove(bridge, vif)
        self._run('add-flows', bridge, '-', stdin='\n'.join(
            flows(vif, ofport)) + '\n')

    def remove(self, bridge, vif):
        self._run('del-flows', bridge, 'cookie=%s/-1' % cookie(vif))

    def dump(self, bridge, vif):
        """The VIF's flows as ovs-ofctl prints them (for checks)."""
        out = self._run('dump-flows', bridge, 'cookie=%s/-1' % cookie(vif))
        return [line.strip() for line in out.splitlines()
                if 'cookie=' in line]
