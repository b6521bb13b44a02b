"""Guest device naming: which bus and which names a guest's disks get.

Policy shared by the builder and the driver. Names are ``<prefix><letter>``
(vda, xvdb, ubdc, sdd, hda); names that volumes or block_device_info claim
are never handed out again.
"""

import string

from compute_agent import rules
from compute_agent.conf import libvirt as libvirt_conf

#: Disk name prefix -> bus (the device naming rule lives in ``rules``).
BUS_BY_PREFIX = rules.DISK_BUSES
strip_dev = rules.strip_dev


class DeviceNamer:
    """Hands out device names in order, skipping those already claimed."""

    def __init__(self, prefix, claimed=()):
        self.prefix = prefix
        self.claimed = set(claimed)

    def nth(self, index):
        return self.prefix + string.ascii_lowercase[index]

    def is_free(self, name):
        return name not in self.claimed

    def claim(self, name):
        self.claimed.add(name)
        return name

    def next_free(self, start=0):
        for letter in string.ascii_lowercase[start:]:
            name = self.prefix + letter
            if name not in self.claimed:
                return name
        raise ValueError('no free %s* device names left' % self.prefix)

    def last_free(self):
        for letter in reversed(string.ascii_lowercase):
            name = self.prefix + letter
            if name not in self.claimed:
                return name
        raise ValueError('no free %s* device names left' % self.prefix)


def disk_prefix_and_bus(conf):
    prefix = libvirt_conf.disk_prefix(conf)
    return prefix, BUS_BY_PREFIX[prefix]


def claimed_by_block_device_info(bdi):
    """Device names block_device_info maps (ephemerals, swap, volumes)."""
    bdi = bdi or {}
    names = [strip_dev(e['device_name']) for e in bdi.get('ephemerals') or ()]
    if bdi.get('swap'):
        names.append(strip_dev(bdi['swap']['device_name']))
    names += volume_devices(bdi)
    return names


def volume_devices(bdi):
    return [strip_dev(v['mount_device'])
            for v in (bdi or {}).get('block_device_mapping') or ()]
