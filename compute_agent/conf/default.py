"""[DEFAULT] options: host identity, paths, concurrency, reporting."""

import socket

from oslo_config import cfg

from compute_agent.conf import hostip

opts = [
    cfg.StrOpt(
        'host', default=socket.gethostname(), sample_default='<hostname>',
        help='Name of this compute host, an opaque string as in nova (e.g. '
             'compute_01.dc1): its server queue is <topic>.<host> and every '
             'report carries it. It must make valid queue names: no control '
             'characters, no AMQP wildcards (* #), at most 255 bytes in all.'),
    cfg.StrOpt(
        'my_ip', default=hostip.my_ipv4(), sample_default='<host_ipv4>',
        help='IP address of this host on the management network; other '
             'options may refer to it as $my_ip (e.g. [vnc] '
             'server_proxyclient_address).'),
    cfg.IntOpt(
        'reserved_host_memory_mb', default=512, min=0,
        help='Memory (MiB) kept for the host itself: a migration is only '
             'accepted when the guest fits in the free memory beyond it '
             '(nova\'s option of the same name).'),
    cfg.BoolOpt(
        'use_cow_images', default=True,
        deprecated_opts=[cfg.DeprecatedOpt('use_cow_images', group='images')],
        help='Root disks are qcow2 overlays on the cached image; false makes '
             'raw copies (nova\'s option of the same name).'),
    cfg.StrOpt(
        'state_path', default='/var/lib/compute-agent',
        help='Directory for the agent\'s own state (the journal).'),
    cfg.StrOpt(
        'instances_path', default='$state_path/instances',
        help='Directory holding one sub-directory per instance plus the image '
             'cache (_base). The agent writes nothing outside it and '
             'state_path.'),
    cfg.IntOpt(
        'max_concurrent_builds', default=10, min=1, max=1000,
        help='Operations on different instances run in parallel up to this '
             'many at once. Twice this many state-changing requests are '
             'validated and queued at a time; later ones wait in arrival '
             'order (read-only requests never wait).'),
    cfg.IntOpt(
        'report_interval', default=10, min=1,
        help='Seconds between host_state_update reports.'),
    cfg.IntOpt(
        'sync_power_state_interval', default=60, min=0,
        help='Seconds between power state syncs against libvirt; 0 disables.'),
    cfg.IntOpt(
        'graceful_shutdown_timeout', default=60, min=0,
        help='On SIGTERM, seconds to let in-flight operations finish; '
             'unfinished ones are left unacknowledged for redelivery.'),
    cfg.IntOpt(
        'journal_max_age', default=7 * 24 * 3600, min=60,
        help='Seconds a finished request stays in the journal for '
             'de-duplication before it is pruned.'),
    cfg.IntOpt(
        'journal_max_entries', default=100000, min=100,
        help='Finished requests kept in the journal at most; the oldest are '
             'pruned first.'),
    cfg.BoolOpt(
        'force_config_drive', default=False,
        help='Attach a config drive to every instance, asked for or not.'),
    cfg.IntOpt(
        'log_line_max_length', default=16384, min=256, mutable=True,
        help='Log messages longer than this many characters are cut (and say '
             'so) before secrets are masked in them; bounds the work per line.'),
    cfg.StrOpt(
        'default_ephemeral_format', default=None,
        choices=[None, 'ext4', 'ext3', 'ext2', 'vfat'],
        help='File system made on new ephemeral disks; unset leaves them '
             'blank.'),
    # -- seed flags of the 2012 driver, and network isolation --------------
    cfg.BoolOpt(
        'allow_same_net_traffic', default=True,
        deprecated_opts=[cfg.DeprecatedOpt('allow-same-net-traffic')],
        help='When a VIF has security rules, also let in all traffic from '
             'the VIF\'s own subnets (as 2012 nova did). The name is the '
             '2012 flag and nova.conf\'s [DEFAULT] option alike.'),
    cfg.StrOpt(
        'injected_network_template', default=None,
        help='Accepted for compatibility with 2012 nova and not used: network '
             'configuration reaches guests through the config drive\'s '
             'openstack/latest/network_data.json (the agent says so at '
             'start when this is set).'),
    cfg.BoolOpt(
        'set_bridge_nf_call', default=False,
        help='Set net.bridge.bridge-nf-call-iptables (and -ip6tables) to 1 '
             'when a bridge VIF with security rules needs it. When false and '
             'the sysctl is 0, such a VIF is refused (VifPlugFailed) rather '
             'than left unfiltered.'),
]


def register(conf):
    conf.register_opts(opts)
