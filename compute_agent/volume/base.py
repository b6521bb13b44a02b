"""What every volume driver shares: the disk skeleton, serials, reachability.

``get_config`` is pure (the builder calls it while planning); ``connect`` and
``disconnect`` do the host side and are idempotent: connecting a connected
volume or disconnecting a disconnected one is not an error.
"""

import socket

from compute_agent import exception
from compute_agent.conf.base import register_group_opts
from compute_agent.virt import blockinfo
from compute_agent.virt import config

SERIAL_MAX = 20     # what QEMU keeps of a virtio-blk serial


def volume_id_of(bdm):
    """The id a block_device_mapping entry is known by: ``volume_id`` or,
    without one, its bare mount device name (``vdb``)."""
    return bdm.get('volume_id') or blockinfo.strip_dev(bdm['mount_device'])


def serial_for(volume_id):
    """The disk ``<serial>`` of a volume: its id cut to what QEMU keeps."""
    return volume_id[:SERIAL_MAX]


def check_reachable(host, port, timeout, volume_id, what):
    """VolumeAttachFailed unless ``host:port`` accepts a TCP connection."""
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as e:
        raise exception.VolumeAttachFailed(
            volume_id=volume_id,
            reason='%s %s:%s is not reachable: %s' % (what, host, port,
                                                       e.strerror or e)) from None


def split_portal(portal, default_port):
    """``host:port`` / ``[v6]:port`` / ``host`` -> (host, port string)."""
    host, sep, port = portal.rpartition(':')
    if not sep or (host.startswith('[') is not host.endswith(']')) or (
            ':' in host and not host.startswith('[')):
        host, port = portal, ''         # a bare host or a bare IPv6 address
    return host.strip('[]'), port or str(default_port)


class VolumeDriver:
    """A volume type; one object per agent, shared by all its volumes.

    ``connection`` (a ``virt.connection.Connection``) is set when the driver
    needs libvirt (secrets); pure planning needs none. Third parties
    register theirs under ``compute_agent.volume_drivers`` with the
    ``driver_volume_type`` as the name; the schema shapes ``data`` only for
    the built-in types, any other driver checks its own.
    """

    #: (OptGroup, [Opt]) pairs the driver reads; registered when loaded.
    opts = ()

    def __init__(self, conf, connection=None):
        self.conf = conf
        self.connection = connection
        for group, opts in self.opts:
            register_group_opts(conf, group, opts)

    def get_config(self, connection_info, target_dev, target_bus):
        """The guest disk (a ``config.Disk``) for this volume."""
        raise NotImplementedError

    def connect(self, connection_info, volume_id=None):
        """Make the volume reachable from this host (nothing by default)."""

    def disconnect(self, connection_info, volume_id=None):
        """Undo ``connect`` (when nothing else still needs it)."""

    def _disk(self, kind, target_dev, target_bus, **values):
        disk = config.Disk(type=kind, device='disk', driver_name='qemu',
                           driver_type='raw', target_dev=target_dev,
                           target_bus=target_bus, **values)
        if kind != 'network':
            disk.driver_cache = self.conf.libvirt.disk_cachemode
        return disk

    def _call(self, fn):
        if self.connection is None:
            raise RuntimeError('%s needs a libvirt connection' % type(self).__name__)
        return self.connection.call(fn)
