"""Linux bridge VIFs: libvirt makes the tap and enslaves it to the bridge."""

from compute_agent.conf import vif as vif_conf
from compute_agent.vif import base


class BridgeDriver(base.VifDriver):
    opts = ((vif_conf.bridge_group, vif_conf.bridge_opts),)

    def get_config(self, instance, vif, virt_type):
        iface = self.base_interface(vif, virt_type, 'bridge')
        iface.source_bridge = vif['network']['bridge']
        iface.target_dev = self.devname(vif)
        iface.mtu = self.mtu(vif)
        return iface
