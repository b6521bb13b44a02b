"""Hot-plug mechanism: add or remove a device, live and persistently.

Attach is ``attachDeviceFlags`` (LIVE|CONFIG on a running guest, CONFIG on a
stopped one). Detach never trusts libvirt's return code: a guest that
ignores ACPI gets a "successful" detach while the device stays. So the live
detach is only a request; the device is gone when the live XML no longer
lists it (libvirt drops it there on QEMU's DEVICE_DELETED, the same moment it
emits VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED). Only then is it removed from the
persistent config; after ``timeout`` it fails and the persistent config is
left as it was.
"""

import logging
import time

import libvirt

from compute_agent.virt import config
from compute_agent.virt import guest

LOG = logging.getLogger(__name__)

POLL = 0.05
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG
# What libvirt/QEMU say when the machine type cannot take another device.
_NO_HOTPLUG = ('does not support hotplugging', 'No more available PCI slots',
               'no free', 'hotplug')


class HotplugError(Exception):
    """A hot-plug libvirt refused or the guest did not complete; ``reason``
    is for the wire (the caller wraps it in its own error class)."""

    def __init__(self, reason):
        self.reason = reason
        super().__init__(reason)


def is_active(dom):
    return guest.libvirt_state(dom) in (libvirt.VIR_DOMAIN_RUNNING,
                                        libvirt.VIR_DOMAIN_BLOCKED,
                                        libvirt.VIR_DOMAIN_PAUSED)


def _reason(exc):
    msg = exc.get_error_message() or str(exc)
    if any(text in msg for text in _NO_HOTPLUG):
        return ('the guest\'s machine type cannot take another hot-plugged '
                'device (%s)' % msg)
    return msg


def attach(dom, device_xml):
    """Add the device to the running guest (if it runs) and to its config."""
    flags = CONFIG | (LIVE if is_active(dom) else 0)
    try:
        dom.attachDeviceFlags(device_xml, flags)
    except libvirt.libvirtError as e:
        raise HotplugError(_reason(e)) from None


def find_disk(xml, target_dev):
    for disk in config.Domain.parse(xml).disks:
        if disk.target_dev == target_dev:
            return disk
    return None


def disk_targets(xml):
    return {d.target_dev for d in config.Domain.parse(xml).disks}


def detach(dom, find, timeout):
    """Remove the device ``find(xml)`` returns (a model object or None).

    Live first, waiting up to ``timeout`` s for the guest to release it
    (HotplugError otherwise, with the persistent config untouched), then
    from the persistent config. Repeatable: a device already gone is skipped.
    """
    if is_active(dom):
        device = find(dom.XMLDesc(0))
        if device is not None:
            _request_live_detach(dom, device)
            if not _wait_gone(dom, find, timeout):
                raise HotplugError('the guest did not release the device within '
                                   '%g s (it may ignore ACPI hot-unplug); it stays '
                                   'attached' % timeout)
    device = find(dom.XMLDesc(guest.INACTIVE_XML))
    if device is not None:
        try:
            dom.detachDeviceFlags(device.to_xml(pretty=False), CONFIG)
        except libvirt.libvirtError as e:
            raise HotplugError(_reason(e)) from None


def _request_live_detach(dom, device):
    try:
        dom.detachDeviceFlags(device.to_xml(pretty=False), LIVE)
    except libvirt.libvirtError as e:
        msg = e.get_error_message() or ''
        if 'already in the process of unplug' in msg:
            return          # a repeated request: just wait again
        if not is_active(dom):
            return          # stopped meanwhile: nothing live to remove
        raise HotplugError(_reason(e)) from None


def _wait_gone(dom, find, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if not is_active(dom) or find(dom.XMLDesc(0)) is None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
