"""Volume drivers: a block_device_mapping entry becomes a guest disk.

Chosen by ``connection_info.driver_volume_type`` from the entry point group
``compute_agent.volume_drivers``: the accepted types are the installed
plugins (a third party adds one by registering an entry point). ``get_config``
is pure (it only describes the disk); host-side attachment steps belong in
``connect``/``disconnect``.
"""

import hashlib
import os

from compute_agent import plugins
from compute_agent.conf.base import register_group_opts
from compute_agent.virt import config

NAMESPACE = plugins.VOLUME_DRIVERS
#: The field a volume type comes from, when the caller does not say which
#: mapping entry (``block_device_info.block_device_mapping[i]...``).
FIELD = 'block_device_info.block_device_mapping.connection_info.driver_volume_type'


class VolumeDriver:
    """Base class; one instance per agent, shared by all volumes of its type.

    Third parties register theirs under ``compute_agent.volume_drivers``
    with the ``driver_volume_type`` as the name. The schema shapes ``data``
    only for the built-in types: any other driver checks its own ``data``.
    """

    #: (OptGroup, [Opt]) pairs the driver reads; registered when loaded.
    opts = ()

    def __init__(self, conf):
        self.conf = conf
        for group, opts in self.opts:
            register_group_opts(conf, group, opts)

    def get_config(self, connection_info, target_dev, target_bus):
        raise NotImplementedError

    def connect(self, connection_info):
        """Make the volume reachable from this host (nothing by default)."""

    def disconnect(self, connection_info):
        """Undo ``connect``."""

    def _disk(self, kind, target_dev, target_bus, **values):
        disk = config.Disk(type=kind, device='disk', driver_name='qemu',
                           driver_type='raw', target_dev=target_dev,
                           target_bus=target_bus, **values)
        if kind != 'network':
            disk.driver_cache = self.conf.libvirt.disk_cachemode
        return disk


class LocalVolumeDriver(VolumeDriver):
    """A host block device or file (``data.device_path``)."""

    def get_config(self, connection_info, target_dev, target_bus):
        path = connection_info['data']['device_path']
        if path.startswith('/dev/'):
            return self._disk('block', target_dev, target_bus, source_dev=path)
        return self._disk('file', target_dev, target_bus, source_file=path)


def _add_auth(disk, data, secret_type):
    if data.get('auth_username'):
        disk.auth_username = data['auth_username']
        disk.auth_secret_type = secret_type
        if data.get('secret_uuid'):
            disk.auth_secret_uuid = data['secret_uuid']
        else:
            disk.auth_secret_usage = data.get('secret_usage') or data['auth_username']


class IscsiVolumeDriver(VolumeDriver):
    """An iSCSI LUN through QEMU's own initiator (a libvirt network disk)."""

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        host, _, port = data['target_portal'].rpartition(':')
        disk = self._disk('network', target_dev, target_bus,
                          source_protocol='iscsi',
                          source_name='%s/%d' % (data['target_iqn'],
                                                 data.get('target_lun', 0)))
        disk.add('source_hosts', config.DiskHost(name=host.strip('[]'),
                                                 port=port or '3260'))
        _add_auth(disk, data, 'iscsi')
        return disk


class RbdVolumeDriver(VolumeDriver):
    """A Ceph RBD image (``data.name`` is ``pool/image``)."""

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        disk = self._disk('network', target_dev, target_bus,
                          source_protocol='rbd', source_name=data['name'])
        for host, port in zip(data.get('hosts') or (), data.get('ports') or ()):
            disk.add('source_hosts', config.DiskHost(name=host, port=str(port)))
        _add_auth(disk, data, 'ceph')
        return disk


class NfsVolumeDriver(VolumeDriver):
    """A file on an NFS export mounted under ``nfs_mount_point_base``."""

    def mount_point(self, export):
        digest = hashlib.sha1(export.encode()).hexdigest()
        return os.path.join(self.conf.libvirt.nfs_mount_point_base, digest)

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        path = os.path.join(self.mount_point(data['export']), data['name'])
        return self._disk('file', target_dev, target_bus, source_file=path)


def load(conf, volume_type, field=FIELD):
    """The volume driver for ``volume_type`` (cached per conf).

    InvalidRequest on ``field`` when no such driver is installed;
    ``plugins.PluginLoadFailed`` when it is installed but does not load.
    """
    return plugins.load(NAMESPACE, volume_type, field, conf)
