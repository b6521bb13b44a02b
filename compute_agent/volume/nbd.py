"""``nbd``: an NBD export, over TCP (``host``/``port``) or a unix ``socket``."""

import os
import stat

from compute_agent import exception
from compute_agent.virt import config
from compute_agent.volume import base

DEFAULT_PORT = 10809


class NbdVolumeDriver(base.VolumeDriver):

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        disk = self._disk('network', target_dev, target_bus,
                          source_protocol='nbd', source_name=data.get('export') or None)
        if data.get('socket'):
            disk.add('source_hosts', config.DiskHost(transport='unix',
                                                     socket=data['socket']))
        else:
            disk.add('source_hosts', config.DiskHost(
                name=data['host'], port=str(data.get('port') or DEFAULT_PORT)))
        return disk

    def connect(self, connection_info, volume_id=None):
        data = connection_info['data']
        if data.get('socket'):
            try:
                mode = os.stat(data['socket']).st_mode
            except OSError as e:
                raise exception.VolumeAttachFailed(
                    volume_id=volume_id, reason='NBD socket %s: %s'
                    % (data['socket'], e.strerror)) from None
            if not stat.S_ISSOCK(mode):
                raise exception.VolumeAttachFailed(
                    volume_id=volume_id, reason='%s is not a socket' % data['socket'])
            return
        base.check_reachable(data['host'], data.get('port') or DEFAULT_PORT,
                             self.conf.libvirt.volume_connect_timeout,
                             volume_id, 'NBD server')
