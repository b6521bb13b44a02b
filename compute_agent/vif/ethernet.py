"""Ethernet VIFs: the agent makes the tap; libvirt uses it unmanaged.

plug() creates the persistent tap ``devname`` (owner ``[ethernet] tap_owner``,
the network's MTU, up) before the guest starts; the domain XML says
``<target dev=... managed='no'/>`` so libvirt opens it as is and leaves it in
place when the guest stops. unplug() deletes it.
"""

import pwd

from compute_agent import exception
from compute_agent.conf import vif as vif_conf
from compute_agent.vif import base
from compute_agent.vif import netdev


class EthernetDriver(base.TapVifDriver):
    opts = ((vif_conf.ethernet_group, vif_conf.ethernet_opts),)

    def get_config(self, instance, vif, virt_type):
        self.validate(vif)
        iface = self.base_interface(vif, virt_type, 'ethernet')
        iface.target_dev = self.devname(vif)
        iface.target_managed = False
        iface.mtu = self.mtu(vif)
        return iface

    def tap_owner_uid(self):
        """uid of ``[ethernet] tap_owner`` (a user name or uid), or None."""
        owner = self.conf.ethernet.tap_owner
        if not owner:
            return None
        try:
            return (pwd.getpwuid(int(owner)) if owner.isdigit()
                    else pwd.getpwnam(owner)).pw_uid
        except (KeyError, ValueError):
            raise exception.ConfigError(
                group='ethernet', option='tap_owner',
                reason='no such user %r' % owner) from None

    def plug(self, instance, vif):
        self.validate(vif)
        try:
            uid = self.tap_owner_uid()
        except exception.ConfigError as e:
            raise self.failed(vif, e.message) from None
        try:
            netdev.ensure_tap(self.devname(vif), mtu=self.mtu(vif), uid=uid)
        except netdev.NetdevError as e:
            raise self.failed(vif, str(e)) from None
