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

from compute_agent import exception
from compute_agent import rules
from compute_agent.conf.base import register_group_opts
from compute_agent.vif import netdev
from compute_agent.virt import config

#: VIF device names: at most 14 characters (docs: protocol-network-info: "tap" + 11).
DEVNAME_MAX = rules.IFNAME_MAX
DEFAULT_DEVNAME_PREFIX = 'tap'
LIBVIRT_RESERVED_PREFIXES = rules.LIBVIRT_RESERVED_PREFIXES


def check_ifname(name, what, max_len=rules.IFNAME_MAX):
    """The reason ``name`` is not a usable device name (``what`` first), or None."""
    reason = rules.IFNAME.check(name)
    if reason is None and len(name) > max_len:
        reason = 'must be at most %d characters' % max_len
    return '%s %s' % (what, reason) if reason else None


def check_mac(mac):
    reason = rules.MAC.check(mac)
    return 'address ' + reason if reason else None


def check_mtu(mtu, what='network.mtu'):
    reason = rules.check_mtu(mtu)
    return '%s %s' % (what, reason) if reason else None


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

        Checks the id, MAC, device name (length, characters, prefix) and MTU
        with the rules of ``compute_agent.rules``; subclasses add their own
        checks (bridge names, ...) by overriding and calling super(). The
        reasons name the VIF field and never repeat its value.
        """
        if not isinstance(vif, dict):
            raise exception.VifPlugFailed(vif_id='?', reason='a VIF must be an object')
        reason = rules.VIF_ID.check(vif.get('id'))
        if reason:
            raise self.failed(vif, 'id ' + reason)
        self.check(vif, check_mac(vif.get('address')))
        network = vif.get('network')
        if network is not None and not isinstance(network, dict):
            raise self.failed(vif, 'network must be an object')
        self.check(vif, check_mtu(self.mtu(vif)))
        prefix = self.details(vif).get('devname_prefix') or DEFAULT_DEVNAME_PREFIX
        self.check(vif, check_ifname(prefix, 'details.devname_prefix',
                                     DEVNAME_MAX - 1))
        # prefix and id are checked strings now: devname() without str().
        devname = vif.get('devname') or (prefix + vif['id'])[:DEVNAME_MAX]
        self.check(vif, check_ifname(devname, 'devname', DEVNAME_MAX))
        if not devname.startswith(prefix):
            raise self.failed(vif, 'devname does not start with details.devname_prefix '
                                   '(default %s)' % DEFAULT_DEVNAME_PREFIX)
        if devname.startswith(LIBVIRT_RESERVED_PREFIXES):
            raise self.failed(vif, 'devname must not start with a prefix libvirt '
                                   'reserves (%s)' % ', '.join(LIBVIRT_RESERVED_PREFIXES))

    @staticmethod
    def _id_of(vif):
        """The VIF's id for messages; '?' unless it keeps the VIF id rule."""
        vif_id = vif.get('id') if isinstance(vif, dict) else None
        return vif_id if rules.VIF_ID.ok(vif_id) else '?'

    def failed(self, vif, reason):
        return exception.VifPlugFailed(vif_id=self._id_of(vif), reason=reason)

    def unplug_failed(self, vif, reason):
        vif_id = self._id_of(vif)
        return exception.VifPlugFailed(
            'Failed to unplug VIF %s: %s' % (vif_id, reason),
            vif_id=vif_id, reason=reason)

    def check(self, vif, reason):
        if reason:
            raise self.failed(vif, reason)

    @staticmethod
    def check_uuid(value):
        return rules.UUID.ok(value)

    # -- helpers shared by the built-in drivers ---------------------------------

    @classmethod
    def devname(cls, vif):
        """The host device name: ``devname``, else prefix + id, cut to 14."""
        devname = vif.get('devname')
        if devname:
            return devname
        prefix = cls.details(vif).get('devname_prefix') or DEFAULT_DEVNAME_PREFIX
        return (str(prefix) + str(vif['id']))[:DEVNAME_MAX]

    @staticmethod
    def mtu(vif):
        return (vif.get('network') or {}).get('mtu')

    @staticmethod
    def details(vif):
        details = vif.get('details')
        return details if isinstance(details, dict) else {}

    def base_interface(self, vif, virt_type, kind):
        if virt_type in ('kvm', 'qemu'):
            return config.Interface(type=kind, mac=vif['address'].lower(),
                                    model='virtio')
        return config.Interface(type=kind, mac=vif['address'].lower())


class TapVifDriver(VifDriver):
    """A driver whose host side ends in a tap: unplug deletes the tap."""

    def unplug(self, instance, vif):
        self.validate(vif)
        try:
            netdev.delete_link(self.devname(vif))
        except netdev.NetdevError as e:
            raise self.unplug_failed(vif, str(e)) from None
