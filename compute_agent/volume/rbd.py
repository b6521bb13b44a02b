"""``rbd``: a Ceph RBD image (``data.name`` is ``pool/image``).

QEMU's librbd client does the I/O. The ceph key lives in a libvirt secret
the operator (or the volume service) defined; ``connect`` checks it exists.
Not runnable here (no Ceph cluster): tests check the XML and the checks.
"""

from compute_agent import exception
from compute_agent.virt import config
from compute_agent.volume import base
from compute_agent.volume import secrets


class RbdVolumeDriver(base.VolumeDriver):

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        disk = self._disk('network', target_dev, target_bus,
                          source_protocol='rbd', source_name=data['name'])
        for host, port in zip(data.get('hosts') or (), data.get('ports') or ()):
            disk.add('source_hosts', config.DiskHost(name=host, port=str(port)))
        if data.get('auth_username'):
            disk.auth_username = data['auth_username']
            disk.auth_secret_type = 'ceph'
            if data.get('secret_uuid'):
                disk.auth_secret_uuid = data['secret_uuid']
            else:
                disk.auth_secret_usage = data.get('secret_usage') or data['auth_username']
        return disk

    def connect(self, connection_info, volume_id=None):
        data = connection_info['data']
        if data.get('auth_username') and data.get('secret_uuid') and not self._call(
                lambda c: secrets.exists_uuid(c, data['secret_uuid'])):
            raise exception.VolumeAttachFailed(
                volume_id=volume_id,
                reason='libvirt has no ceph secret %s' % data['secret_uuid'])
