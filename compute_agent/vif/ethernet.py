"""Ethernet VIFs: the agent makes the tap; libvirt uses it unmanaged."""

from compute_agent.conf import vif as vif_conf
from compute_agent.vif import base


class EthernetDriver(base.VifDriver):
    opts = ((vif_conf.ethernet_group, vif_conf.ethernet_opts),)

    def get_config(self, instance, vif, virt_type):
        iface = self.base_interface(vif, virt_type, 'ethernet')
        iface.target_dev = self.devname(vif)
        iface.target_managed = False
        iface.mtu = self.mtu(vif)
        return iface
