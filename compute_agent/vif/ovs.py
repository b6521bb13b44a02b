"""Open vSwitch VIFs: a port on the integration bridge, found by its id.

plug() makes sure ``[ovs] integration_bridge`` exists (created with
``[ovs] datapath_type``; ``netdev`` where the kernel has no OVS module) and
pre-creates the port ``devname`` with the external_ids a controller looks
for: ``iface-id`` (the VIF id), ``attached-mac``, ``vm-uuid`` (the instance
uuid) and ``iface-status=active``. The guest's ``<virtualport
type='openvswitch'>`` makes libvirt run ``--may-exist add-port`` at guest
start, which reuses that port and only adds its own keys (``iface-id``,
``attached-mac``, ``iface-status``, ``vm-id``): ``vm-uuid`` survives (seen
with libvirt 9.0). libvirt deletes the port when the guest stops, so plug()
runs before every start; post_start() re-applies the keys in case a libvirt
recreated the port from scratch. unplug() deletes the port if it is left.
"""

from compute_agent.conf import vif as vif_conf
from compute_agent.virt import config
from compute_agent.vif import base
from compute_agent.vif import netdev
from compute_agent.vif import ovsdb


class OvsDriver(base.VifDriver):
    opts = ((vif_conf.ovs_group, vif_conf.ovs_opts),)

    def __init__(self, conf):
        super().__init__(conf)
        self._vsctl = None

    @property
    def vsctl(self):
        if self._vsctl is None:
            self._vsctl = ovsdb.OvsVsctl(timeout=self.conf.ovs.ovs_vsctl_timeout)
        return self._vsctl

    def bridge(self, vif):
        return self.conf.ovs.integration_bridge

    def validate(self, vif):
        super().validate(vif)
        # libvirt parses <parameters interfaceid=...> as a UUID.
        if not self.check_uuid(vif['id']):
            raise self.failed(vif, 'id must be a UUID (libvirt needs the OVS '
                                   'interface id to be one)')
        self.check(vif, base.check_ifname(self.bridge(vif),
                                          '[ovs] integration_bridge'))

    def get_config(self, instance, vif, virt_type):
        self.validate(vif)
        iface = self.base_interface(vif, virt_type, 'bridge')
        iface.source_bridge = self.bridge(vif)
        iface.virtualport = config.VirtualPort(type='openvswitch',
                                               interface_id=vif['id'])
        iface.target_dev = self.devname(vif)
        iface.mtu = self.mtu(vif)
        return iface

    def external_ids(self, instance, vif):
        return {'iface-id': vif['id'],
                'attached-mac': vif['address'].lower(),
                'vm-uuid': instance['uuid'],
                'iface-status': 'active'}

    def ensure_bridge(self, vif):
        """Create the integration bridge if missing; check it really works.

        An existing bridge is used as it is (its datapath is not changed).
        ``add-br`` exits 0 even when ovs-vswitchd could not create the
        datapath, so the bridge's own interface must have an ofport.
        """
        bridge = self.bridge(vif)
        created = False
        if not self.vsctl.br_exists(bridge):
            self.vsctl.add_bridge(bridge, self.conf.ovs.datapath_type)
            created = True
        state = self.vsctl.interface_state(bridge)
        ofport = (state or {}).get('ofport')
        if not isinstance(ofport, int) or ofport < 0:
            reason = ('OVS bridge %s is not working (ofport %s, error %s)' % (
                bridge, ofport, (state or {}).get('error')))
            if created:
                # Leave no broken bridge behind: the next plug, perhaps with
                # [ovs] datapath_type fixed, creates it afresh.
                self.vsctl.del_bridge(bridge)
                reason += ('; ovs-vswitchd could not create a %r datapath '
                           '(no kernel OVS module? set [ovs] datapath_type = '
                           'netdev)' % self.conf.ovs.datapath_type)
            raise self.failed(vif, reason)

    def plug(self, instance, vif):
        self.validate(vif)
        devname = self.devname(vif)
        try:
            self.ensure_bridge(vif)
            # The tap does not exist yet: OVS records the port with an
            # "could not open network device" error until libvirt makes it.
            self.vsctl.add_port(self.bridge(vif), devname,
                                self.external_ids(instance, vif))
        except ovsdb.OvsError as e:
            raise self.failed(vif, str(e)) from None

    def post_start(self, instance, vif):
        self.validate(vif)
        devname = self.devname(vif)
        try:
            bridge = self.vsctl.port_to_bridge(devname)
            if bridge != self.bridge(vif):
                raise self.failed(vif, 'port %s is on %s, not on %s after the '
                                       'guest started' % (devname, bridge,
                                                          self.bridge(vif)))
            self.vsctl.set_external_ids(devname, self.external_ids(instance, vif))
        except ovsdb.OvsError as e:
            raise self.failed(vif, str(e)) from None

    def unplug(self, instance, vif):
        self.validate(vif)
        devname = self.devname(vif)
        try:
            self.vsctl.del_port(devname, self.bridge(vif))
            # libvirt removes its tap when QEMU exits; a leftover one (a
            # crashed libvirtd) would block the next start.
            netdev.delete_link(devname)
        except (ovsdb.OvsError, netdev.NetdevError) as e:
            raise self.unplug_failed(vif, str(e)) from None
