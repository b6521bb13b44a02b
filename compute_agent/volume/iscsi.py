"""``iscsi``: a LUN through QEMU's own initiator (libiscsi, a network disk).

No kernel initiator, no host block device: QEMU talks to the portal itself.
CHAP: with ``auth_password`` the password goes into a libvirt secret this
driver manages (usage derived from portal, IQN and user); with only
``secret_uuid`` or ``secret_usage`` the operator's secret is used as it is.
"""

from compute_agent import exception
from compute_agent.virt import config
from compute_agent.volume import base
from compute_agent.volume import secrets

DEFAULT_PORT = 3260


def chap_usage(data):
    """The managed secret's usage id, or None when the caller names one."""
    if not data.get('auth_username') or data.get('secret_uuid'):
        return None
    if data.get('auth_password') is None:
        return None
    return secrets.usage_name('iscsi', data['target_portal'], data['target_iqn'],
                              data['auth_username'])


class IscsiVolumeDriver(base.VolumeDriver):

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        host, port = base.split_portal(data['target_portal'], DEFAULT_PORT)
        disk = self._disk('network', target_dev, target_bus,
                          source_protocol='iscsi',
                          source_name='%s/%d' % (data['target_iqn'],
                                                 data.get('target_lun') or 0))
        disk.add('source_hosts', config.DiskHost(name=host, port=port))
        if data.get('auth_username'):
            disk.auth_username = data['auth_username']
            disk.auth_secret_type = 'iscsi'
            if data.get('secret_uuid'):
                disk.auth_secret_uuid = data['secret_uuid']
            else:
                disk.auth_secret_usage = (chap_usage(data) or data.get('secret_usage')
                                          or data['auth_username'])
        return disk

    def connect(self, connection_info, volume_id=None):
        data = connection_info['data']
        host, port = base.split_portal(data['target_portal'], DEFAULT_PORT)
        base.check_reachable(host, port, self.conf.libvirt.volume_connect_timeout,
                             volume_id, 'iSCSI portal')
        usage = chap_usage(data)
        if usage:
            self._call(lambda c: secrets.ensure(c, 'iscsi', usage, data['auth_password']))
        elif data.get('secret_uuid') and not self._call(
                lambda c: secrets.exists_uuid(c, data['secret_uuid'])):
            raise exception.VolumeAttachFailed(
                volume_id=volume_id,
                reason='libvirt has no secret %s' % data['secret_uuid'])

    def disconnect(self, connection_info, volume_id=None):
        usage = chap_usage(connection_info['data'])
        if usage:
            self._call(lambda c: secrets.release(c, 'iscsi', usage))
