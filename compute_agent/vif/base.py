"""The VIF driver plugin interface (loaded per VIF ``type``).

A driver describes the guest side of a VIF (``get_config``, pure) and
prepares the host side (``plug``/``unplug``, both idempotent). Third parties
register theirs under the entry point group ``compute_agent.vif_drivers``
with the VIF type as the name; options go in the driver's own config group.
"""

import abc

from compute_agent.virt import config


class VifDriver(abc.ABC):
    """Base class; one instance per agent, shared by all VIFs of its type."""

    #: (OptGroup, [Opt]) pairs the driver reads; registered when loaded.
    opts = ()

    def __init__(self, conf):
        self.conf = conf
        for group, opts in self.opts:
            conf.register_group(group)
            conf.register_opts(opts, group=group)

    @abc.abstractmethod
    def get_config(self, instance, vif, virt_type):
        """The guest's <interface> for ``vif`` (a config.Interface)."""

    def plug(self, instance, vif):
        """Create what the guest's NIC needs on the host; safe to repeat."""

    def unplug(self, instance, vif):
        """Remove what plug made; missing devices are not an error."""

    # Helpers shared by the built-in drivers.

    @staticmethod
    def devname(vif):
        return vif.get('devname') or ('tap' + vif['id'])[:14]

    @staticmethod
    def mtu(vif):
        return (vif.get('network') or {}).get('mtu')

    def base_interface(self, vif, virt_type, kind):
        iface = config.Interface(type=kind, mac=vif['address'])
        if virt_type in ('kvm', 'qemu'):
            iface.model = 'virtio'
        return iface
