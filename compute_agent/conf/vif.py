"""Options of the built-in VIF drivers, one group per driver."""

from oslo_config import cfg

from compute_agent.conf import base

ovs_group = cfg.OptGroup('ovs', title='Open vSwitch VIF driver')
ovs_opts = [
    cfg.StrOpt('integration_bridge', default='br-int',
               help='OVS bridge ovs VIFs are plugged into; created when '
                    'missing.'),
    cfg.StrOpt('datapath_type', default='system', choices=['system', 'netdev'],
               help='Datapath of a bridge the agent creates: netdev '
                    '(userspace) where the kernel has no OVS module.'),
    cfg.IntOpt('ovs_vsctl_timeout', default=120, min=1,
               help='Seconds an ovs-vsctl command may take.'),
]

bridge_group = cfg.OptGroup('linux_bridge', title='Linux bridge VIF driver')
bridge_opts = [
    cfg.IntOpt('default_mtu', default=1500, min=68, max=65535,
               help='MTU of a bridge the agent creates when the network '
                    'names none.'),
]

ethernet_group = cfg.OptGroup('ethernet', title='Ethernet (agent-made tap) '
                                                'VIF driver')
ethernet_opts = [
    cfg.StrOpt('tap_owner', default=None,
               help='User that owns taps the agent creates (unset: root); '
                    'QEMU opens them through libvirt either way.'),
]

GROUPS = ((ovs_group, ovs_opts), (bridge_group, bridge_opts),
          (ethernet_group, ethernet_opts))


def register(conf):
    for group, opts in GROUPS:
        base.register_group_opts(conf, group, opts)
