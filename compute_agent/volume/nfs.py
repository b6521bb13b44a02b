"""``nfs``: a file on an NFS export, mounted under ``nfs_mount_point_base``.

``connect`` mounts the export (once per export, a directory named by its
SHA-1), ``disconnect`` unmounts it when no domain uses a file under it any
more. Not runnable here (no kernel NFS client): tests check the XML and the
mount commands.
"""

import hashlib
import logging
import os
import subprocess

import libvirt

from compute_agent import exception
from compute_agent.virt import config
from compute_agent.volume import base

LOG = logging.getLogger(__name__)
MOUNT_TIMEOUT = 60


def is_mounted(path):
    with open('/proc/self/mounts') as f:
        return any(line.split()[1] == path for line in f if len(line.split()) > 1)


class NfsVolumeDriver(base.VolumeDriver):

    def mount_point(self, export):
        digest = hashlib.sha1(export.encode()).hexdigest()
        return os.path.join(self.conf.libvirt.nfs_mount_point_base, digest)

    def get_config(self, connection_info, target_dev, target_bus):
        data = connection_info['data']
        path = os.path.join(self.mount_point(data['export']), data['name'])
        return self._disk('file', target_dev, target_bus, source_file=path)

    def connect(self, connection_info, volume_id=None):
        data = connection_info['data']
        path = self.mount_point(data['export'])
        if is_mounted(path):
            return
        os.makedirs(path, exist_ok=True)
        cmd = ['mount', '-t', 'nfs']
        if data.get('options'):
            cmd += ['-o', data['options']]
        proc = subprocess.run(cmd + ['--', data['export'], path], capture_output=True,
                              text=True, timeout=MOUNT_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise exception.VolumeAttachFailed(
                volume_id=volume_id, reason='mounting %s failed: %s'
                % (data['export'], proc.stderr.strip() or proc.returncode))

    def disconnect(self, connection_info, volume_id=None):
        path = self.mount_point(connection_info['data']['export'])
        if not is_mounted(path) or self._call(lambda c: _used(c, path)):
            return
        proc = subprocess.run(['umount', '--', path], capture_output=True, text=True,
                              timeout=MOUNT_TIMEOUT, check=False)
        if proc.returncode != 0:
            LOG.warning('Unmounting %s failed: %s', path, proc.stderr.strip())


def _used(conn, mount_point):
    prefix = mount_point.rstrip('/') + '/'
    for dom in conn.listAllDomains(0):
        for flags in (0, libvirt.VIR_DOMAIN_XML_INACTIVE):
            try:
                disks = config.Domain.parse(dom.XMLDesc(flags)).disks
            except libvirt.libvirtError:
                continue
            if any((d.source_file or '').startswith(prefix) for d in disks):
                return True
    return False
