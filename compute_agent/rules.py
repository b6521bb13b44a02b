"""The input rules: every name, id and address a request may carry, once.

Each rule is defined here and nowhere else; the JSON schemas
(``schemas``), the VIF drivers, the disks, the block device naming and the
image cache all use these objects, so what the door accepts is exactly what
the parts behind it accept (docs: protocol-objects).

A :class:`Rule` is an anchored pattern (ECMA-262 flavoured, as JSON Schema
reads it: ``$`` is the very end, never "before a final newline") plus, for
some, an extra check. ``rule.check(value)`` returns the reason a value is
refused or None; ``rule.require(value, field)`` raises
``InvalidRequest(field, reason)``. Reasons describe the rule and never
repeat the value, so nothing a caller sent (a password pasted into the
wrong field, say) can leak into logs or replies through them.
"""

import re

from compute_agent import exception

_ECMA_DOLLAR = re.compile(r'(?<!\\)\$')
_BY_PATTERN = {}


def compile_pattern(pattern):
    """A JSON Schema (ECMA-262) ``pattern`` as a Python regex: ``$`` -> ``\\Z``."""
    return re.compile(_ECMA_DOLLAR.sub(r'\\Z', pattern))


class Rule:
    """A named input rule: a pattern and an optional extra check.

    ``extra(value)`` (for a string that matches the pattern) returns a
    reason or None.
    """

    def __init__(self, name, pattern, reason=None, extra=None):
        self.name = name
        self.pattern = pattern
        self.regex = compile_pattern(pattern)
        self.reason = reason or 'does not match %s' % pattern
        self.extra = extra
        _BY_PATTERN[pattern] = self

    def check(self, value):
        """The reason ``value`` breaks the rule, or None."""
        if not isinstance(value, str):
            return 'must be a string'
        if not self.regex.search(value):
            return self.reason
        return self.extra(value) if self.extra else None

    def ok(self, value):
        return self.check(value) is None

    def require(self, value, field):
        """``value`` if it keeps the rule, else InvalidRequest naming ``field``."""
        reason = self.check(value)
        if reason:
            raise exception.InvalidRequest(field, reason)
        return value

    def schema(self, nullable=False, **extra):
        """The JSON schema of a string (or null) following this rule."""
        schema = {'type': ['string', 'null'] if nullable else 'string',
                  'pattern': self.pattern}
        schema.update(extra)
        return schema

    def __repr__(self):
        return 'Rule(%s)' % self.name


def reason_for(pattern):
    """The reason for a string that does not match a schema ``pattern``."""
    rule = _BY_PATTERN.get(pattern)
    return rule.reason if rule else 'does not match %s' % pattern


# -- instances and images ------------------------------------------------------------

#: libvirt domain name and directory under ``instances_path``.
INSTANCE_NAME = Rule('instance name', r'^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$')

#: Every image_ref, kernel_id, ramdisk_id, image_meta.id and snapshot
#: image_id (docs: protocol-objects): part of a store URL and a file name.
IMAGE_ID = Rule('image id', r'^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$')

#: ``image_meta.checksum``: md5 hex, or sha256 as ``sha256:<hex>``.
CHECKSUM = Rule('checksum', r'^[0-9a-f]{32}$|^sha256:[0-9a-f]{64}$')

UUID = Rule('uuid', r'^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-'
                    r'[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$',
            reason='must be a UUID string (8-4-4-4-12 hex digits)')


# -- VIFs ---------------------------------------------------------------------------------

def _unicast(mac):
    # mac matched the pattern: six hex pairs, so no octet list is needed.
    if int(mac[:2], 16) & 1 or not mac.strip('0:'):
        return 'must not be a multicast or all-zero MAC address'
    return None


MAC = Rule('MAC address', r'^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$',
           reason='must be a MAC address (xx:xx:xx:xx:xx:xx)', extra=_unicast)
VIF_ID = Rule('VIF id', r'^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$')

#: Host interface names (VIF devname, bridge): the kernel allows 15
#: characters (IFNAMSIZ 16 with the NUL); VIF devices are kept to 14 ("tap"
#: + 11, as the protocol docs and nova say), and so are bridges. Only characters
#: libvirt, ip and ovs-vsctl never need to quote.
IFNAME_MAX = 14
IFNAME = Rule('interface name', r'^[A-Za-z][A-Za-z0-9_.-]{0,%d}$' % (IFNAME_MAX - 1),
              reason='must be 1-%d letters, digits, "_", "." or "-", starting with '
                     'a letter' % IFNAME_MAX)

#: libvirt treats target devs with these prefixes as its own generated
#: names: it drops them and makes up "vnetN" instead, so a VIF cannot ask
#: for one (and must never claim a device libvirt handed to another guest).
LIBVIRT_RESERVED_PREFIXES = ('vnet', 'vif', 'macvtap', 'macvlan')

MTU_MIN, MTU_MAX = 68, 65535


def check_mtu(mtu):
    """Reason an MTU (None = unset) is refused, or None."""
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        return 'must be an integer or null'
    if not MTU_MIN <= mtu <= MTU_MAX:
        return 'must be between %d and %d' % (MTU_MIN, MTU_MAX)
    return None


# -- plugin names (VIF types, volume types, image source schemes) ----------------------

#: A VIF ``type`` or ``connection_info.driver_volume_type``: the name of an
#: installed driver plugin (see ``plugins``).
PLUGIN_NAME = Rule('plugin name', r'^[a-z][a-z0-9_]{0,31}$')


# -- block devices ---------------------------------------------------------------------------

#: Guest disk name prefixes (``vda``, ``xvdb``, ...) and the bus each means.
DISK_PREFIXES = ('vd', 'xvd', 'sd', 'hd', 'ubd')
DISK_BUSES = {'vd': 'virtio', 'xvd': 'xen', 'sd': 'scsi', 'hd': 'ide', 'ubd': 'uml'}
_DISK = r'(%s)[a-z]$' % '|'.join(DISK_PREFIXES)
#: A bare guest disk name (``vdb``), as the record's ``devices`` hold it.
DISK_NAME = Rule('disk name', '^' + _DISK)
#: ``root_device_name``, ``device_name``, ``mount_device`` and an attach's
#: ``mountpoint``: ``/dev/`` + a disk name.
DEVICE_PATH = Rule('device path', '^/dev/' + _DISK)

#: A volume's id (``block_device_mapping[].volume_id``, docs: protocol-volumes-1-1): it
#: names the volume in the record and becomes the disk's <serial>.
VOLUME_ID = Rule('volume id', r'^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$')
#: What ``detach_volume`` names a volume by: its id, or for one attached
#: without an id its ``mount_device`` as given (``/dev/vdc``) or bare.
VOLUME_REF = Rule('volume id or device path',
                  r'^([A-Za-z0-9][A-Za-z0-9._-]{0,254}|/dev/%s)$' % _DISK[:-1])

#: The guest user whose password ``set_admin_password`` sets (a POSIX-style
#: login name: no ``:``, space or newline can reach chpasswd's input line).
USER_NAME = Rule('user name', r'^[A-Za-z_][A-Za-z0-9._-]{0,31}$')


def strip_dev(name):
    """``/dev/vdb`` -> ``vdb``; a bare name or None is returned as is."""
    return name[5:] if name and name.startswith('/dev/') else name


# -- cross-field rules ------------------------------------------------------------------------

def check_image_meta_id(instance, image_meta, field='image_meta.id'):
    """``image_meta.id`` must be ``instance.image_ref`` when both are given.

    docs: protocol-image-meta: the root disk is made from ``image_ref``; an
    ``image_meta`` that describes another image would have its format,
    checksum and location silently applied to the wrong one.
    """
    image_ref = (instance or {}).get('image_ref')
    image_id = (image_meta or {}).get('id')
    if image_ref is not None and image_id is not None and image_ref != image_id:
        raise exception.InvalidRequest(field, 'must equal instance.image_ref')
