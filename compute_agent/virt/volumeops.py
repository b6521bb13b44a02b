"""Volumes on an existing guest: pick the device name, connect, hot-plug.

The driver's ``attach_volume``/``detach_volume`` call these with the guest's
``virDomain``; the manager keeps the record. Policy (which name, what is in
use) is here and in ``blockinfo``; mechanism in ``hotplug`` and the volume
drivers.
"""

import logging

from compute_agent import exception
from compute_agent.virt import blockinfo
from compute_agent.virt import builder
from compute_agent.virt import config
from compute_agent.virt import guest
from compute_agent.virt import hotplug
from compute_agent.virt import volume

LOG = logging.getLogger(__name__)


def used_devices(dom):
    """Disk target names in the live and the persistent XML."""
    names = hotplug.disk_targets(dom.XMLDesc(guest.INACTIVE_XML))
    if hotplug.is_active(dom):
        names |= hotplug.disk_targets(dom.XMLDesc(0))
    return names


def _disk_with_serial(dom, serial):
    for flags in ((0, guest.INACTIVE_XML) if hotplug.is_active(dom) else (guest.INACTIVE_XML,)):
        for disk in config.Domain.parse(dom.XMLDesc(flags)).disks:
            if disk.serial == serial:
                return disk
    return None


def pick_device(conf, dom, mountpoint, claimed=(), volume_id=None):
    """The bare device name for a new volume: ``mountpoint`` checked, or
    the next free one. InvalidRequest naming ``mountpoint`` otherwise.

    A disk of the guest that already carries the volume's serial is the
    volume (an attach the agent did not live to record): its name is kept.
    """
    prefix, _bus = blockinfo.disk_prefix_and_bus(conf)
    found = volume_id and _disk_with_serial(dom, volume.serial_for(volume_id))
    if found and found.target_dev not in claimed:
        return found.target_dev
    used = used_devices(dom) | set(claimed)
    if mountpoint is None:
        try:
            return blockinfo.DeviceNamer(prefix, used).next_free(start=1)
        except ValueError as e:
            raise exception.InvalidRequest('mountpoint', str(e)) from None
    dev = blockinfo.strip_dev(mountpoint)
    if not (dev.startswith(prefix) and len(dev) == len(prefix) + 1):
        raise exception.InvalidRequest(
            'mountpoint', 'must be /dev/%s<letter> on this host' % prefix)
    if dev in used:
        raise exception.InvalidRequest('mountpoint', '%s is already in use' % mountpoint)
    return dev


def attach(conf, connection, dom, bdm):
    """Connect the volume and plug its disk; on failure nothing is left."""
    info = bdm['connection_info']
    vid = volume.volume_id_of(bdm)
    drv = volume.load(conf, info['driver_volume_type'], connection=connection,
                      field='connection_info.driver_volume_type')
    _prefix, bus = blockinfo.disk_prefix_and_bus(conf)
    disk = builder.volume_disk(conf, bdm, blockinfo.strip_dev(bdm['mount_device']),
                               bus, drv)
    drv.connect(info, vid)
    if _disk_with_serial(dom, disk.serial) is not None:
        return      # attached by an earlier try whose outcome was not recorded
    try:
        hotplug.attach(dom, disk.to_xml(pretty=False))
    except BaseException as e:
        try:
            drv.disconnect(info, vid)
        except Exception:
            LOG.exception('Disconnecting volume %s after a failed attach failed', vid)
        if isinstance(e, hotplug.HotplugError):
            raise exception.VolumeAttachFailed(volume_id=vid, reason=e.reason) from None
        raise


def detach(conf, connection, dom, bdm):
    """Unplug the volume's disk (waiting for the guest), then disconnect."""
    info = bdm['connection_info']
    vid = volume.volume_id_of(bdm)
    dev = blockinfo.strip_dev(bdm['mount_device'])
    try:
        hotplug.detach(dom, lambda xml: hotplug.find_disk(xml, dev),
                       conf.libvirt.device_detach_timeout)
    except hotplug.HotplugError as e:
        raise exception.VolumeDetachFailed(volume_id=vid, reason=e.reason) from None
    volume.load(conf, info['driver_volume_type'],
                connection=connection).disconnect(info, vid)
