"""[libvirt] options: hypervisor type, connection, guest XML policy.

Each option also answers to its 2012 nova.conf name in [DEFAULT].
"""

from oslo_config import cfg

from compute_agent.conf import base

group = cfg.OptGroup('libvirt', title='libvirt driver options')

VIRT_TYPES = ('kvm', 'qemu', 'xen', 'lxc', 'uml')
DEFAULT_URIS = {
    'kvm': 'qemu:///system',
    'qemu': 'qemu:///system',
    'xen': 'xen:///',
    'lxc': 'lxc:///',
    'uml': 'uml:///system',
}


def _old(name):
    return [cfg.DeprecatedOpt(name, group='DEFAULT')]


opts = [
    cfg.StrOpt(
        'virt_type', default='kvm', choices=VIRT_TYPES,
        deprecated_opts=_old('libvirt_type'),
        help='Domain type of the guests this host runs.'),
    cfg.StrOpt(
        'connection_uri', default='',
        deprecated_opts=_old('libvirt_uri'),
        help='libvirt connection URI; empty derives it from virt_type '
             '(qemu:///system, xen:///, lxc:///, uml:///system).'),
    cfg.StrOpt(
        'disk_prefix', default=None, choices=[None, 'vd', 'xvd', 'ubd', 'sd', 'hd'],
        deprecated_opts=_old('libvirt_disk_prefix'),
        help='Prefix of guest disk device names; unset picks it from '
             'virt_type (vd for kvm/qemu, xvd for xen, ubd for uml, sd for '
             'lxc).'),
    cfg.StrOpt(
        'disk_cachemode', default='none',
        choices=['none', 'writethrough', 'writeback', 'directsync', 'unsafe',
                 'default'],
        help='Cache mode of file-backed guest disks. "none" needs a file '
             'system with O_DIRECT (not tmpfs).'),
    cfg.StrOpt(
        'cpu_mode', default=None,
        choices=[None, 'host-model', 'host-passthrough', 'custom', 'none'],
        deprecated_opts=_old('libvirt_cpu_mode'),
        help='Guest CPU mode; unset means host-model on kvm and none '
             'elsewhere.'),
    cfg.StrOpt(
        'cpu_model', default=None,
        deprecated_opts=_old('libvirt_cpu_model'),
        help='CPU model name when cpu_mode is custom.'),
    cfg.BoolOpt(
        'use_usb_tablet', default=True,
        deprecated_opts=_old('use_usb_tablet'),
        help='Give VNC guests a USB tablet so the pointer tracks the '
             'client\'s (not on Xen paravirtual guests).'),
    cfg.BoolOpt(
        'sysinfo_serial', default=True,
        help='Put the instance uuid in the guest\'s SMBIOS system serial '
             '(kvm/qemu).'),
    cfg.StrOpt(
        'clock_offset', default='utc', choices=['utc', 'localtime'],
        help='Guest clock offset (kvm/qemu).'),
    cfg.BoolOpt(
        'mem_balloon', default=True,
        help='Give kvm/qemu guests a virtio memory balloon for stats.'),
    cfg.StrOpt(
        'rng_dev_path', default=None,
        help='Host entropy source for a virtio RNG device on kvm/qemu '
             'guests, e.g. /dev/urandom; unset adds none.'),
    cfg.IntOpt(
        'wait_soft_reboot_seconds', default=120, min=1,
        deprecated_opts=_old('libvirt_wait_soft_reboot_seconds'),
        help='Seconds to wait for an ACPI reboot before a hard one; also '
             'how long a rebuild waits for its guest to shut down cleanly '
             'before it stops it hard.'),
    cfg.StrOpt(
        'rescue_image_id', default=None,
        deprecated_opts=_old('rescue_image_id'),
        help='Image booted by rescue; unset uses the instance\'s own image.'),
    cfg.StrOpt(
        'rescue_kernel_id', default=None,
        deprecated_opts=_old('rescue_kernel_id'),
        help='Kernel for rescue; unset uses the instance\'s kernel.'),
    cfg.StrOpt(
        'rescue_ramdisk_id', default=None,
        deprecated_opts=_old('rescue_ramdisk_id'),
        help='Ramdisk for rescue; unset uses the instance\'s ramdisk.'),
    cfg.StrOpt(
        'vif_driver', default=None,
        deprecated_opts=_old('libvirt_vif_driver'),
        deprecated_for_removal=True,
        deprecated_reason='VIF drivers are chosen per VIF "type" from the '
                          'compute_agent.vif_drivers entry points.',
        help='Accepted so a 2012 nova.conf still loads; ignored.'),
    cfg.StrOpt(
        'nfs_mount_point_base', default='$state_path/mnt',
        help='Where NFS volume exports are mounted, one directory per '
             'export (named by the export\'s SHA-1).'),
    cfg.FloatOpt(
        'device_detach_timeout', default=20.0, min=0.5,
        help='Seconds a hot-unplug waits for the guest to let the device go '
             '(libvirt\'s live XML no longer lists it). After that the '
             'detach fails (VolumeDetachFailed) and the device stays attached '
             'and recorded.'),
    cfg.FloatOpt(
        'volume_connect_timeout', default=3.0, min=0.1,
        help='Seconds a volume driver waits for a network volume\'s server '
             '(iSCSI portal, NBD server) to accept a TCP connection when it '
             'checks the volume is reachable before attaching it.'),
    cfg.StrOpt(
        'hw_machine_type', default=None,
        help='QEMU machine type of kvm/qemu guests (e.g. "pc", "q35"); unset '
             'means QEMU\'s default (pc). q35 guests get num_pcie_ports '
             'spare PCIe root ports for hot-plugged disks and NICs.'),
    cfg.IntOpt(
        'num_pcie_ports', default=8, min=0, max=28,
        help='Spare pcie-root-port controllers a q35 guest gets beyond those '
             'its own devices use: each takes one hot-plugged disk or NIC.'),
    cfg.IntOpt(
        'connect_retries', default=10, min=0,
        help='Attempts to open the libvirt connection before an operation '
             'fails with HypervisorUnavailable.'),
    cfg.IntOpt(
        'connection_pool_size', default=0, min=0, max=1024,
        help='Most libvirt connections the agent opens, each when first '
             'needed; 0 means max_concurrent_builds + 2 (one per operation '
             'that may run at once, two for lookups and periodic tasks). A '
             'call takes an idle connection if there is one: on a connection '
             'with a domain start in flight even a short call waits. '
             'test:/// URIs other than test:///default use one (each '
             'connection there is a separate mock host).'),
    cfg.IntOpt(
        'console_log_max_bytes', default=8 * 1024 * 1024, min=64 * 1024,
        help='Most bytes one guest\'s console log may take on disk, '
             'rotated files included. The log is written by virtlogd, which '
             'rotates it at its own max_size and keeps max_backups old '
             'files (virtlogd_conf); the agent removes older files that '
             'would exceed this, and refuses to start when virtlogd\'s '
             'max_size alone is larger or rotation is off.'),
    cfg.StrOpt(
        'virtlogd_conf', default='/etc/libvirt/virtlogd.conf',
        help='virtlogd\'s configuration file, read at start for its '
             'max_size and max_backups (libvirt\'s defaults, 2 MiB and 3, '
             'when it is missing or does not set them).'),
    cfg.FloatOpt(
        'stopped_event_delay', default=15.0, min=0.0,
        help='Seconds a STOPPED lifecycle event must hold before it is '
             'reported, so a guest that reboots itself is not reported as '
             'stopped (nova waits 15 s too).'),
    # snapshot (docs: protocol-method-snapshot; why: virt/snapshot.py)
    cfg.IntOpt(
        'snapshot_pause_max_mb', default=1024, min=0,
        help='A snapshot of a running guest whose root disk allocates at '
             'most this many MiB (its whole backing chain, as qemu-img '
             'info counts it) pauses the guest and copies the disk with '
             'qemu-img, the fastest copy: measured here 0.7-1.4 s paused '
             'per GiB read from disk. Larger disks are copied by a libvirt '
             'block copy that never pauses the guest but takes longer. '
             '0 never pauses.'),
    cfg.FloatOpt(
        'connect_retry_interval', default=1.0, min=0.0,
        help='Seconds between libvirt connection attempts (doubling, '
             'capped at 10 s).'),
    # -- guest agent (issue 15, guest agent channel) --
    cfg.BoolOpt(
        'guest_agent', default=True,
        help='Give every kvm/qemu guest the org.qemu.guest_agent.0 '
             'virtio-serial channel, through which the agent talks to a '
             'QEMU guest agent (qemu-ga) in the guest: file system freeze '
             'for snapshots, set_admin_password, guest IP addresses. '
             'Applies to guests defined (spawned, hard-rebooted, rescued) '
             'after the change; without the channel those features report '
             'GuestAgentUnavailable.'),
    cfg.IntOpt(
        'guest_agent_timeout', default=30, min=1, max=3600,
        help='Seconds one guest-agent command may take before it fails '
             'with GuestAgentUnavailable. A command that does not answer '
             'blocks only its own operation, never other guests nor the '
             'same guest\'s destroy.'),
    # -- end of guest agent --
    # -- live migration (docs: protocol-migration-hosts) ----------------------
    cfg.StrOpt(
        'live_migration_scheme', default='tcp',
        help='Scheme of the URI other hosts reach this host\'s libvirt with: '
             'qemu+<scheme>://<address>/system (tcp, tls, ssh...). Ignored '
             'when live_migration_uri is set.'),
    cfg.HostAddressOpt(
        'live_migration_inbound_addr', default=None,
        help='Address other hosts send live migrations to this host at '
             '(its libvirt and the migration stream); unset means my_ip.'),
    cfg.StrOpt(
        'live_migration_uri', default=None,
        help='The libvirt URI of this host as other hosts use it, "%s" '
             'standing for the address (e.g. qemu+tcp://%s/system); unset '
             'derives it from live_migration_scheme.'),
    cfg.FloatOpt(
        'live_migration_peer_timeout', default=30.0, min=1.0,
        help='Seconds an agent waits for the other agent of a migration '
             'to answer a handshake step (its heartbeats extend the wait); '
             'a destination that does not answer in time fails the '
             'pre-check (MigrationPreCheckError).'),
    cfg.FloatOpt(
        'live_migration_settle_interval', default=10.0, min=0.0,
        help='Seconds between attempts to settle a live migration an agent '
             'or libvirtd death interrupted (at start, then until the other '
             'agent answers and one running copy remains); 0 disables it.'),
]


def register(conf):
    base.register_group_opts(conf, group, opts)


def connection_uri(conf):
    """The URI to open: the configured one, else the virt type's default."""
    return conf.libvirt.connection_uri or DEFAULT_URIS[conf.libvirt.virt_type]


def disk_prefix(conf):
    if conf.libvirt.disk_prefix:
        return conf.libvirt.disk_prefix
    return {'kvm': 'vd', 'qemu': 'vd', 'xen': 'xvd', 'uml': 'ubd',
            'lxc': 'sd'}[conf.libvirt.virt_type]


def migration_address(conf):
    """Where other hosts reach this host for a live migration."""
    return conf.libvirt.live_migration_inbound_addr or conf.my_ip


def migration_uri(conf, address):
    """The libvirt URI of the host at ``address`` (docs: protocol-migration-hosts)."""
    if conf.libvirt.live_migration_uri:
        return conf.libvirt.live_migration_uri % address
    host = '[%s]' % address if ':' in address else address
    return 'qemu+%s://%s/system' % (conf.libvirt.live_migration_scheme, host)
