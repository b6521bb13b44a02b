"""Small Linux network device helpers on pyroute2's ``IPRoute`` (netlink).

No shelling out to ``ip``/``brctl``. Each call opens its own netlink socket
(about a millisecond), so the helpers are safe to use from several threads.
pyroute2's ``NDB`` is deliberately not used: 0.9.7 raises AttributeError
when it creates a tuntap device.

The helpers only ever delete or modify devices of the kind the caller names
(``tun`` for taps, ``bridge`` for Linux bridges): a name that turns out to be
some other device (a host NIC, an OVS internal port) is an error, never
touched.
"""

import errno
import logging

# pyroute2 sets its logger to NOTSET when imported, which would undo the
# level [DEFAULT] default_log_levels gave it (its DEBUG dumps every link).
_LEVEL = logging.getLogger('pyroute2').level
from pyroute2 import IPRoute  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
logging.getLogger('pyroute2').setLevel(_LEVEL)

#: IFLA_INFO_KIND of tun/tap devices (both modes), and IFLA_TUN_TYPE of a tap.
TUN_KIND = 'tun'
TUN_TYPE_TAP = 2


class NetdevError(Exception):
    """A netlink operation failed, or a device is not what it should be."""


def _one(ipr, name):
    links = ipr.get_links(ifname=name)
    return links[0] if links else None


def _kind(link):
    info = link.get_attr('IFLA_LINKINFO')
    return info.get_attr('IFLA_INFO_KIND') if info is not None else None


def _tun_type(link):
    info = link.get_attr('IFLA_LINKINFO')
    data = info.get_attr('IFLA_INFO_DATA') if info is not None else None
    return data.get_attr('IFLA_TUN_TYPE') if data is not None else None


def _describe(link):
    return _kind(link) or 'a device without a kind (physical NIC?)'


def _one_of_kinds(ipr, name, kinds, action):
    """The link ``name`` or None; NetdevError if it is not of one of
    ``kinds`` (``action``, e.g. 'delete', is what is refused)."""
    link = _one(ipr, name)
    if link is not None and _kind(link) not in kinds:
        raise NetdevError('refusing to %s %s: it is %s, not %s' % (
            action, name, _describe(link), ' or '.join(kinds)))
    return link


def _netlink(what, name, exc):
    return NetdevError('%s %s: %s' % (what, name, exc))


def link_exists(name):
    with IPRoute() as ipr:
        return _one(ipr, name) is not None


def link_info(name):
    """{'index', 'kind', 'mtu', 'master', 'up', 'carrier', 'tun_type'} or None.

    ``master`` is the master device's name (a Linux bridge, or the OVS
    datapath's ``ovs-system``) or None.
    """
    with IPRoute() as ipr:
        link = _one(ipr, name)
        if link is None:
            return None
        master = link.get_attr('IFLA_MASTER')
        master_name = None
        if master:
            masters = ipr.get_links(master)
            master_name = masters[0].get_attr('IFLA_IFNAME') if masters else None
        return {
            'index': link['index'],
            'kind': _kind(link),
            'mtu': link.get_attr('IFLA_MTU'),
            'master': master_name,
            'up': bool(link['flags'] & 1),   # IFF_UP
            'carrier': bool(link.get_attr('IFLA_CARRIER')),
            'tun_type': _tun_type(link),
        }


def master_of(name):
    """Name of the device ``name`` is enslaved to, or None (also if missing)."""
    info = link_info(name)
    return info['master'] if info else None


def _set_mtu_up(ipr, link, name, mtu):
    kwargs = {'state': 'up'}
    if mtu and link.get_attr('IFLA_MTU') != mtu:
        kwargs['mtu'] = mtu
    try:
        ipr.link('set', index=link['index'], **kwargs)
    except NetlinkError as e:
        raise _netlink('cannot set %s on' % ', '.join(
            '%s=%s' % kv for kv in sorted(kwargs.items())), name, e) from None


def ensure_bridge(name, mtu):
    """Make Linux bridge ``name`` exist and be up; True if it was created.

    A new bridge gets ``mtu`` (set after creation, so the kernel treats it as
    chosen by the user and does not lower it to its smallest port's). An
    existing bridge is only brought up: its MTU is the operator's.
    """
    with IPRoute() as ipr:
        link = _one(ipr, name)
        created = False
        if link is None:
            try:
                ipr.link('add', ifname=name, kind='bridge')
                created = True
            except NetlinkError as e:
                if e.code != errno.EEXIST:   # else: made meanwhile by another thread
                    raise _netlink('cannot create bridge', name, e) from None
            link = _one(ipr, name)
            if link is None:
                raise NetdevError('bridge %s vanished right after creation' % name)
        if _kind(link) != 'bridge':
            raise NetdevError('%s exists but is %s, not a Linux bridge' % (
                name, _describe(link)))
        _set_mtu_up(ipr, link, name, mtu if created else None)
        return created


def ensure_tap(name, mtu=None, uid=None, gid=None):
    """Make persistent tap ``name`` exist and be up; True if it was created.

    An existing tap is reused (its MTU corrected); an existing device of
    another kind is an error. ``uid``/``gid`` set the tap's owner (None: only
    CAP_NET_ADMIN may attach).
    """
    with IPRoute() as ipr:
        link = _one(ipr, name)
        created = False
        if link is None:
            kwargs = {}
            if uid is not None:
                kwargs['uid'] = uid
            if gid is not None:
                kwargs['gid'] = gid
            try:
                # The tuntap "kind" is an ioctl on /dev/net/tun under the hood:
                # adding an existing tap silently attaches to it, hence the
                # lookup above instead of relying on EEXIST.
                ipr.link('add', ifname=name, kind='tuntap', mode='tap',
                         ifr={'no_pi': 1}, **kwargs)
                created = True
            except (NetlinkError, OSError) as e:
                raise _netlink('cannot create tap', name, e) from None
            link = _one(ipr, name)
            if link is None:
                raise NetdevError('tap %s vanished right after creation' % name)
        if _kind(link) != TUN_KIND or _tun_type(link) != TUN_TYPE_TAP:
            raise NetdevError('%s exists but is %s, not a tap' % (
                name, _describe(link) if _kind(link) != TUN_KIND else 'a tun'))
        _set_mtu_up(ipr, link, name, mtu)
        return created


def set_mtu(name, mtu, kinds=(TUN_KIND,)):
    """Set the MTU of ``name`` if it exists and is of one of ``kinds``.

    Returns True if the device exists (whether or not the MTU changed).
    """
    with IPRoute() as ipr:
        link = _one_of_kinds(ipr, name, kinds, 'set the mtu of')
        if link is None:
            return False
        if link.get_attr('IFLA_MTU') != mtu:
            try:
                ipr.link('set', index=link['index'], mtu=mtu)
            except NetlinkError as e:
                raise _netlink('cannot set mtu=%s on' % mtu, name, e) from None
        return True


def delete_link(name, kinds=(TUN_KIND,)):
    """Delete ``name`` if it exists; True if it was deleted.

    Only devices of one of ``kinds`` are deleted: anything else under that
    name raises NetdevError and is left alone.
    """
    with IPRoute() as ipr:
        link = _one_of_kinds(ipr, name, kinds, 'delete')
        if link is None:
            return False
        try:
            ipr.link('del', index=link['index'])
        except NetlinkError as e:
            if e.code == errno.ENODEV:   # went away meanwhile (QEMU exited)
                return False
            raise _netlink('cannot delete', name, e) from None
        return True
