"""The VIF driver plugin interface (loaded per VIF ``type``).

A driver describes the guest side of a VIF (``get_config``, pure) and
prepares the host side (``plug``/``unplug``, both idempotent). Third parties
register theirs under the entry point group ``compute_agent.vif_drivers``
with the VIF type as the name; options go in the driver's own config group.

Life cycle, as the virt driver calls it for each VIF of a guest::

    get_config()  -> <interface> in the domain XML
    plug()        before every start of the domain (spawn, power on,
                  hard reboot, resume, rescue, incoming migration)
    post_start()  right after every such start succeeded
    unplug()      after the domain is destroyed (delete, or rollback)

``VifDrivers.plug_all/post_start_all/unplug_all`` (loader.py) do this for a
whole ``network_info``. Every method validates the VIF first
(:meth:`VifDriver.validate`) and raises ``VifPlugFailed`` naming the VIF
before touching anything on the host: drivers do not trust their callers.
"""

import abc
import re
import uuid

from compute_agent import exception
from compute_agent.conf.base import register_group_opts
from compute_agent.vif import netdev
from compute_agent.virt import config

#: Kernel limit is IFNAMSIZ (16) including the NUL: 15 characters. VIF
#: device names are kept to 14 (PROTOCOL.md: "tap" + 11), like nova.
IFNAME_MAX = 15
DEVNAME_MAX = 14
DEFAULT_DEVNAME_PREFIX = 'tap'
# Characters accepted in device names; the kernel allows more (anything but
# '/', ':' and whitespace), libvirt and ovs-vsctl do not always quote them.
_IFNAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')
_MAC_RE = re.compile(r'^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$')
_VIF_ID_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$')
# libvirt treats target dev names with these prefixes as its own generated
# ones: it drops them and makes up "vnetN" instead, so they cannot be asked
# for (and a VIF must never claim a device libvirt handed to another guest).
LIBVIRT_RESERVED_PREFIXES = ('vnet', 'vif', 'macvtap', 'macvlan')
MTU_MIN, MTU_MAX = 68, 65535


def check_ifname(name, what, max_len=IFNAME_MAX):
    """Return a reason string if ``name`` is not a usable device name."""
    if not isinstance(name, str) or not name:
        return '%s must be a non-empty string, not %r' % (what, name)
    if len(name) > max_len:
        return '%s %r is %d characters long; at most %d are allowed' % (
            what, name, len(name), max_len)
    if not _IFNAME_RE.match(name):
        return ('%s %r may only contain letters, digits, "_", "." and "-" '
                'and must start with a letter or digit' % (what, name))
    return None


def check_mac(mac):
    if not isinstance(mac, str) or not _MAC_RE.match(mac):
        return 'address %r is not a MAC address (xx:xx:xx:xx:xx:xx)' % (mac,)
    if int(mac[:2], 16) & 1:
        return 'address %s is a multicast MAC address' % mac
    if mac.replace(':', '').strip('0') == '':
        return 'address %s is the all-zero MAC address' % mac
    return None


def check_mtu(mtu, what='network.mtu'):
    if mtu is None:
        return None
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        return '%s must be an integer, not %r' % (what, mtu)
    if not MTU_MIN <= mtu <= MTU_MAX:
        return '%s %d is outside %d..%d' % (what, mtu, MTU_MIN, MTU_MAX)
    return None


class VifDriver(abc.ABC):
    """Base class; one instance per agent, shared by all VIFs of its type."""

    #: (OptGroup, [Opt]) pairs the driver reads; registered when loaded.
    opts = ()

    def __init__(self, conf):
        self.conf = conf
        for group, opts in self.opts:
            register_group_opts(conf, group, opts)

    @abc.abstractmethod
    def get_config(self, instance, vif, virt_type):
        """The guest's <interface> for ``vif`` (a config.Interface)."""

    def plug(self, instance, vif):
        """Create what the guest's NIC needs on the host; safe to repeat.

        Called before every start of the domain.
        """

    def post_start(self, instance, vif):
        """Finish the host side once the domain runs; safe to repeat.

        Called right after every successful start of the domain, when the
        devices libvirt makes at start (taps, OVS ports) exist. Default: no-op.
        """

    def unplug(self, instance, vif):
        """Remove what plug made; missing devices are not an error."""

    # -- validation -------------------------------------------------------------

    def validate(self, vif):
        """Raise VifPlugFailed unless ``vif`` is safe to act on.

        Checks the id, MAC, device name (length, characters, prefix) and MTU;
        subclasses add their own checks (bridge names, ...) by overriding and
        calling super().
        """
        if not isinstance(vif, dict):
            raise exception.VifPlugFailed(
                vif_id='?', reason='a VIF must be an object, not %r' % (vif,))
        vif_id = vif.get('id')
        if not isinstance(vif_id, str) or not _VIF_ID_RE.match(vif_id):
            raise self.failed(vif, 'id %r must be 1-255 letters, digits, '
                                   '".", "_" or "-"' % (vif_id,))
        self.check(vif, check_mac(vif.get('address')))
        network = vif.get('network')
        if network is not None and not isinstance(network, dict):
            raise self.failed(vif, 'network must be an object')
        self.check(vif, check_mtu(self.mtu(vif)))
        details = self.details(vif)
        prefix = details.get('devname_prefix') or DEFAULT_DEVNAME_PREFIX
        self.check(vif, check_ifname(prefix, 'details.devname_prefix',
                                     DEVNAME_MAX - 1))
        devname = self.devname(vif)
        self.check(vif, check_ifname(devname, 'devname', DEVNAME_MAX))
        if not devname.startswith(prefix):
            raise self.failed(vif, 'devname %r does not start with %r' % (
                devname, prefix))
        for reserved in LIBVIRT_RESERVED_PREFIXES:
            if devname.startswith(reserved):
                raise self.failed(vif, 'devname %r uses libvirt\'s reserved '
                                       'prefix %r' % (devname, reserved))

    def failed(self, vif, reason):
        vif_id = vif.get('id') if isinstance(vif, dict) else None
        return exception.VifPlugFailed(vif_id=vif_id or '?', reason=reason)

    def unplug_failed(self, vif, reason):
        vif_id = (vif.get('id') if isinstance(vif, dict) else None) or '?'
        return exception.VifPlugFailed(
            'Failed to unplug VIF %s: %s' % (vif_id, reason),
            vif_id=vif_id, reason=reason)

    def check(self, vif, reason):
        if reason:
            raise self.failed(vif, reason)

    @staticmethod
    def check_uuid(value):
        try:
            return str(uuid.UUID(str(value))) == str(value).lower()
        except ValueError:
            return False

    # -- helpers shared by the built-in drivers ---------------------------------

    @classmethod
    def devname(cls, vif):
        """The host device name: ``devname``, else prefix + id, cut to 14."""
        prefix = cls.details(vif).get('devname_prefix') or DEFAULT_DEVNAME_PREFIX
        return vif.get('devname') or (str(prefix) + str(vif['id']))[:DEVNAME_MAX]

    @staticmethod
    def mtu(vif):
        return (vif.get('network') or {}).get('mtu')

    @staticmethod
    def details(vif):
        details = vif.get('details')
        return details if isinstance(details, dict) else {}

    def base_interface(self, vif, virt_type, kind):
        iface = config.Interface(type=kind, mac=vif['address'].lower())
        if virt_type in ('kvm', 'qemu'):
            iface.model = 'virtio'
        return iface


class TapVifDriver(VifDriver):
    """A driver whose host side ends in a tap: unplug deletes the tap."""

    def unplug(self, instance, vif):
        self.validate(vif)
        try:
            netdev.delete_link(self.devname(vif))
        except netdev.NetdevError as e:
            raise self.unplug_failed(vif, str(e)) from None
