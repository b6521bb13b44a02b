"""``local``: a file or block device on this host (``data.device_path``)."""

import os

from compute_agent import exception
from compute_agent.volume import base


class LocalVolumeDriver(base.VolumeDriver):

    def get_config(self, connection_info, target_dev, target_bus):
        path = connection_info['data']['device_path']
        if path.startswith('/dev/'):
            return self._disk('block', target_dev, target_bus, source_dev=path)
        return self._disk('file', target_dev, target_bus, source_file=path)

    def connect(self, connection_info, volume_id=None):
        path = connection_info['data']['device_path']
        if not os.path.exists(path):
            raise exception.VolumeAttachFailed(
                volume_id=volume_id, reason='%s does not exist' % path)
        if not os.access(path, os.R_OK):
            raise exception.VolumeAttachFailed(
                volume_id=volume_id, reason='%s is not readable' % path)
        if os.path.isdir(path):
            raise exception.VolumeAttachFailed(
                volume_id=volume_id, reason='%s is a directory' % path)
