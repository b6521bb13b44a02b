"""NICs on an existing guest: plug the VIF with its driver, hot-plug the NIC.

The driver's ``attach_interface``/``detach_interface`` call these with the
guest's ``virDomain``; the manager keeps the record. The VIF's driver
(bridge, ovs, ethernet or a plugin) does the host side exactly as at spawn:
``plug`` before the NIC exists, ``post_start`` once QEMU made its tap,
``unplug`` after the guest let the NIC go. Its filter travels with it as at
spawn: defined before the NIC, applied after it, removed with it.
"""

import logging

from compute_agent import exception
from compute_agent.netfilter import firewall as firewall_mod
from compute_agent.virt import config
from compute_agent.virt import hotplug

LOG = logging.getLogger(__name__)


def check(vif_drivers, network_info, vif):
    """InvalidRequest naming ``vif`` when it cannot join ``network_info``
    (unknown type, bad VIF, an id, device name or MAC already used)."""
    if any(v['id'] == vif['id'] for v in network_info):
        raise exception.InvalidRequest('vif.id', '%s is already attached' % vif['id'])
    try:
        vif_drivers.validate_all(list(network_info) + [vif])
    except exception.VifPlugFailed as e:
        raise exception.InvalidRequest('vif', e.message) from None
    except exception.InvalidRequest as e:
        raise exception.InvalidRequest('vif.type', e.reason) from None


def find_interface(xml, mac):
    mac = mac.lower()
    for iface in config.Domain.parse(xml).interfaces:
        if (iface.mac or '').lower() == mac:
            return iface
    return None


def attach(conf, vif_drivers, firewall, dom, instance, vif):
    """Plug the VIF and hot-plug its NIC; on failure nothing is left."""
    drv = vif_drivers.get(vif['type'], field='vif.type')
    if find_interface(dom.XMLDesc(0), vif['address']) is not None:
        return      # attached by an earlier try whose outcome was not recorded
    try:
        firewall.prepare(instance, [vif])
        drv.plug(instance, vif)
        iface = drv.get_config(instance, vif, conf.libvirt.virt_type)
        firewall_mod.decorate(conf, iface, vif)
        hotplug.attach(dom, iface.to_xml(pretty=False))
        if hotplug.is_active(dom):
            drv.post_start(instance, vif)
            firewall.post_start(instance, [vif])
    except BaseException as e:
        _undo(dom, drv, firewall, instance, vif)
        if isinstance(e, hotplug.HotplugError):
            raise exception.InterfaceAttachFailed(vif_id=vif['id'], reason=e.reason) from None
        if isinstance(e, exception.VifPlugFailed):
            raise exception.InterfaceAttachFailed(vif_id=vif['id'], reason=e.message) from None
        raise


def _undo(dom, drv, firewall, instance, vif):
    try:
        if find_interface(dom.XMLDesc(0), vif['address']) is not None:
            hotplug.detach(dom, lambda xml: find_interface(xml, vif['address']), 5)
        drv.unplug(instance, vif)
        firewall.teardown(instance, [vif])
    except Exception:
        LOG.exception('Undoing the failed attach of VIF %s failed', vif['id'])


def detach(conf, vif_drivers, firewall, dom, instance, vif):
    """Hot-unplug the NIC (waiting for the guest), then unplug the VIF."""
    try:
        hotplug.detach(dom, lambda xml: find_interface(xml, vif['address']),
                       conf.libvirt.device_detach_timeout)
    except hotplug.HotplugError as e:
        raise exception.InterfaceDetachFailed(vif_id=vif['id'], reason=e.reason) from None
    try:
        vif_drivers.get(vif['type']).unplug(instance, vif)
        firewall.teardown(instance, [vif])
    except exception.AgentError as e:
        raise exception.InterfaceDetachFailed(vif_id=vif['id'], reason=e.message) from None
