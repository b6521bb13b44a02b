"""Linux bridge VIFs: libvirt makes the tap and enslaves it to the bridge.

plug() makes sure the bridge ``network.bridge`` exists and is up (created
with the network's MTU, else ``[linux_bridge] default_mtu``); libvirt
creates the tap ``devname`` when the guest starts, enslaves it and removes
it when the guest stops. unplug() only removes a tap left behind; the bridge
is shared by other guests and is never deleted.
"""

from compute_agent.conf import vif as vif_conf
from compute_agent.vif import base
from compute_agent.vif import netdev


class BridgeDriver(base.TapVifDriver):
    opts = ((vif_conf.bridge_group, vif_conf.bridge_opts),)

    def validate(self, vif):
        super().validate(vif)
        bridge = (vif.get('network') or {}).get('bridge')
        self.check(vif, base.check_ifname(bridge, 'network.bridge'))
        if bridge == self.devname(vif):
            raise self.failed(vif, 'network.bridge and devname name the same device')

    def get_config(self, instance, vif, virt_type):
        self.validate(vif)
        iface = self.base_interface(vif, virt_type, 'bridge')
        iface.source_bridge = vif['network']['bridge']
        iface.target_dev = self.devname(vif)
        iface.mtu = self.mtu(vif)
        return iface

    def bridge_mtu(self, vif):
        return self.mtu(vif) or self.conf.linux_bridge.default_mtu

    def plug(self, instance, vif):
        self.validate(vif)
        bridge = vif['network']['bridge']
        try:
            netdev.ensure_bridge(bridge, self.bridge_mtu(vif))
        except netdev.NetdevError as e:
            raise self.failed(vif, str(e)) from None

    def post_start(self, instance, vif):
        """Check the tap is on the bridge; give it the network's MTU.

        libvirt already applies <mtu>; without one the tap gets the bridge's
        MTU, which is what we want too.
        """
        self.validate(vif)
        devname = self.devname(vif)
        bridge = vif['network']['bridge']
        try:
            info = netdev.link_info(devname)
            if info is None:
                raise self.failed(vif, 'tap %s does not exist after the guest '
                                       'started' % devname)
            if info['master'] != bridge:
                raise self.failed(vif, 'tap %s is enslaved to %s, not to bridge '
                                       '%s' % (devname, info['master'], bridge))
            mtu = self.mtu(vif)
            if mtu and info['mtu'] != mtu:
                netdev.set_mtu(devname, mtu)
        except netdev.NetdevError as e:
            raise self.failed(vif, str(e)) from None
