"""[vnc] options: the guests' VNC consoles.

The Pike-era names ([vnc] vncserver_*) and the 2012 ones ([DEFAULT]
vnc_*, vncserver_*) are accepted as deprecated names.
"""

from oslo_config import cfg

from compute_agent.conf import base

group = cfg.OptGroup('vnc', title='VNC console options')

opts = [
    cfg.BoolOpt(
        'enabled', default=True,
        deprecated_opts=[cfg.DeprecatedOpt('vnc_enabled', group='DEFAULT')],
        help='Give kvm/qemu/xen guests a VNC console.'),
    cfg.StrOpt(
        'keymap', default='en-us',
        deprecated_opts=[cfg.DeprecatedOpt('vnc_keymap', group='DEFAULT')],
        help='Keymap of the VNC console.'),
    cfg.HostAddressOpt(
        'server_listen', default='127.0.0.1',
        deprecated_opts=[cfg.DeprecatedOpt('vncserver_listen', group='vnc'),
                         cfg.DeprecatedOpt('vncserver_listen', group='DEFAULT')],
        help='Address the guests\' VNC servers listen on.'),
    cfg.HostAddressOpt(
        'server_proxyclient_address', default='127.0.0.1',
        deprecated_opts=[cfg.DeprecatedOpt('vncserver_proxyclient_address',
                                           group='vnc'),
                         cfg.DeprecatedOpt('vncserver_proxyclient_address',
                                           group='DEFAULT')],
        help='Address a VNC proxy uses to reach this host\'s consoles; '
             'get_vnc_console returns it.'),
]


def register(conf):
    base.register_group_opts(conf, group, opts)
