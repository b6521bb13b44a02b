"""Open vSwitch VIFs: a port on the integration bridge, found by its id."""

from compute_agent.conf import vif as vif_conf
from compute_agent.virt import config
from compute_agent.vif import base


class OvsDriver(base.VifDriver):
    opts = ((vif_conf.ovs_group, vif_conf.ovs_opts),)

    def bridge(self, vif):
        return self.conf.ovs.integration_bridge

    def get_config(self, instance, vif, virt_type):
        iface = self.base_interface(vif, virt_type, 'bridge')
        iface.source_bridge = self.bridge(vif)
        iface.virtualport = config.VirtualPort(type='openvswitch',
                                               interface_id=vif['id'])
        iface.target_dev = self.devname(vif)
        iface.mtu = self.mtu(vif)
        return iface
