"""What the virt driver calls to put VIF filters in place and take them away.

Per VIF type: ``bridge`` and ``ethernet`` VIFs get an nwfilter (defined
before every start; the interface XML references it, see
``nwfilter.filterref``), ``ovs`` VIFs get OpenFlow rules after every start.
Every step is idempotent, like the VIF drivers' plug/unplug.
"""

import copy
import logging

from compute_agent import exception
from compute_agent.netfilter import nwfilter
from compute_agent.netfilter import openflow
from compute_agent.netfilter import prereq
from compute_agent.netfilter import spec
from compute_agent.vif import ovsdb

LOG = logging.getLogger(__name__)

NWFILTER_TYPES = ('bridge', 'ethernet')
OVS_TYPES = ('ovs',)


def _failed(vif, reason):
    return exception.VifPlugFailed(vif_id=vif.get('id') or '?', reason=reason)


def filterref(vif):
    """The builder's hook: the ``<filterref>`` of a VIF's interface, or None."""
    if vif.get('type') in NWFILTER_TYPES:
        return nwfilter.filterref(vif)
    return None


def decorate(conf, iface, vif):
    """The builder's hook: what filtering needs in a VIF's <interface>.

    bridge/ethernet: the <filterref>. OVS on a userspace (netdev) datapath:
    the guest must not hand over TCP/UDP packets with partial checksums
    (virtio checksum offload), which OVS's userspace conntrack marks invalid
    (measured: ICMP passed, TCP did not), so <driver><host csum='off'/>.
    """
    ref = filterref(vif)
    if ref is not None:
        iface.filterref = ref
    if (vif.get('type') in OVS_TYPES and spec.enabled(vif)
            and conf.ovs.datapath_type == 'netdev'
            and iface.model == 'virtio'):
        iface.host_csum = False


def describe(network_info):
    """``{vif id: {'anti_spoofing', 'rules'}}`` for the instance record."""
    return {vif['id']: spec.effective(vif) for vif in network_info or ()}


class Firewall:
    def __init__(self, conf, call):
        """``call(fn)`` runs ``fn(conn)`` on a libvirt connection."""
        self.conf = conf
        self.call = call
        self._ofctl = None
        self._vsctl = None

    @property
    def ofctl(self):
        if self._ofctl is None:
            self._ofctl = openflow.OpenFlow()
        return self._ofctl

    @property
    def vsctl(self):
        if self._vsctl is None:
            self._vsctl = ovsdb.OvsVsctl(timeout=self.conf.ovs.ovs_vsctl_timeout)
        return self._vsctl

    # -- before the guest starts -------------------------------------------------
    def check(self, vif):
        """Raise VifPlugFailed if the host cannot enforce ``vif``'s filter."""
        kind = vif.get('type')
        if kind in OVS_TYPES and any(
                r.get('ethertype', 'IPv4') == 'IPv6'
                for r in spec.effective(vif)['rules'] or ()):
            raise _failed(vif, 'IPv6 security rules on Open vSwitch ports are '
                               'not implemented by this agent')
        if kind not in NWFILTER_TYPES:
            return
        reason = (self.call(prereq.nwfilter_driver) or prereq.ebtables())
        if not reason and nwfilter.needs_iptables(vif) and kind == 'bridge':
            reason = prereq.bridge_nf_call(self.conf.set_bridge_nf_call)
        if reason:
            raise _failed(vif, 'cannot filter this VIF: ' + reason)

    def prepare(self, instance, network_info):
        """Check prerequisites and define the nwfilters (before start)."""
        for vif in network_info or ():
            self.check(vif)
        for vif in network_info or ():
            if vif.get('type') in NWFILTER_TYPES:
                self.call(lambda c, v=vif: nwfilter.define(
                    c, v, self.conf.allow_same_net_traffic))

    # -- after the guest started ---------------------------------------------------
    def post_start(self, instance, network_info):
        for vif in network_info or ():
            if vif.get('type') in OVS_TYPES:
                self._ovs_apply(vif)

    def _ovs_apply(self, vif):
        bridge = self.conf.ovs.integration_bridge
        try:
            if not spec.enabled(vif):
                self.ofctl.remove(bridge, vif)
                return
            dev = vif.get('devname')
            _, out = self.vsctl.run('get', 'Interface', dev, 'ofport')
            ofport = int(out.strip())
            if ofport < 1:
                raise _failed(vif, 'port %s has no OpenFlow number' % dev)
            self.ofctl.replace(bridge, vif, ofport,
                               self.conf.allow_same_net_traffic)
        except (openflow.OpenFlowError, ovsdb.OvsError, ValueError) as e:
            raise _failed(vif, 'cannot install its OpenFlow rules: %s' % e) from None

    # -- removal -------------------------------------------------------------------
    def teardown(self, instance, network_info):
        """Remove every filter of these VIFs (after the domain is gone)."""
        for vif in network_info or ():
            kind = vif.get('type')
            if kind in NWFILTER_TYPES:
                self.call(lambda c, v=vif: nwfilter.undefine(
                    c, nwfilter.filter_name(v)))
            elif kind in OVS_TYPES:
                try:
                    self.ofctl.remove(self.conf.ovs.integration_bridge, vif)
                except openflow.OpenFlowError as e:
                    # No bridge, no flows: nothing is left behind.
                    LOG.warning('VIF %s: removing flows: %s', vif.get('id'), e)

    # -- live change -----------------------------------------------------------------
    def update_rules(self, network_info, vif_id, rules, running):
        """A copy of ``network_info`` with ``vif_id``'s rules replaced, applied.

        Raises InvalidRequest if no VIF has that id. ``running``: whether
        the guest runs (OVS flows need its port; a stopped guest gets them
        at its next start).
        """
        network_info = copy.deepcopy(network_info or [])
        for vif in network_info:
            if vif.get('id') == vif_id:
                break
        else:
            raise exception.InvalidRequest('vif_id', 'the instance has no VIF '
                                                     'with this id')
        flt = dict(vif.get('filter') or {})
        flt.setdefault('anti_spoofing', True)
        flt['rules'] = rules
        vif['filter'] = flt
        self.check(vif)
        if vif.get('type') in NWFILTER_TYPES:
            # libvirt re-applies a redefined filter to running guests.
            self.call(lambda c: nwfilter.define(
                c, vif, self.conf.allow_same_net_traffic))
        elif vif.get('type') in OVS_TYPES and running:
            self._ovs_apply(vif)
        return network_info
