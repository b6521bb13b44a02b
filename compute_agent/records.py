"""What an instance record shows on the wire (docs: protocol-objects).

The journal keeps the whole record, private keys included (the stored
request ``spec``, the rescue request, the interrupted-operation mark); a
reply, ``get_info`` and ``list_instances`` show ``public(record)``. The
record's volumes and VIFs are not kept twice: they are the stored request's
``block_device_mapping`` and ``network_info``, which every attach and detach
updates, so a hard reboot, rescue or destroy always follows them.
"""

import datetime

from compute_agent.netfilter import firewall
from compute_agent.virt import blockinfo
from compute_agent.volume.base import volume_id_of

PUBLIC_KEYS = ('uuid', 'name', 'host', 'vm_state', 'task_state', 'power_state',
               'devices', 'vnc', 'created_at', 'updated_at', 'error',
               'power_checked_at')


def now():
    """The time a record or report carries (UTC, ISO 8601)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def public(record):
    spec = record.get('spec') or {}
    out = {k: record.get(k) for k in PUBLIC_KEYS}
    # The flavor in force (a resize changes the stored request's).
    out['flavor'] = (spec.get('instance') or {}).get('flavor')
    out['volumes'] = volumes_of(record)
    out['vifs'] = vifs_of(record)
    out['image_ref'] = (spec.get('instance') or {}).get('image_ref')
    # Each VIF's filter (docs: protocol-vif-filter), as kept in the record.
    out['filters'] = firewall.describe(spec.get('network_info'))
    # The guest agent (docs: protocol-guest-agent): whether one answered
    # since the guest last started, and the addresses it reported (null
    # while none did).
    out['guest_agent'] = bool(record.get('guest_agent'))
    out['guest_addresses'] = record.get('guest_addresses')
    return out


def mappings(record):
    """The stored request's block_device_mapping entries."""
    bdi = (record.get('spec') or {}).get('block_device_info') or {}
    return list(bdi.get('block_device_mapping') or ())


def volumes_of(record):
    """The record's ``volumes``: ``{volume_id, device, driver_volume_type}``."""
    return [{'volume_id': volume_id_of(b),
             'device': blockinfo.strip_dev(b['mount_device']),
             'driver_volume_type': b['connection_info']['driver_volume_type']}
            for b in mappings(record)]


def vifs_of(record):
    """The record's ``vifs``: ``{id, address, type, devname, ips}``."""
    return [{'id': v['id'], 'address': v['address'], 'type': v['type'],
             'devname': v.get('devname'),
             'ips': [ip['address'] for s in (v.get('network') or {}).get('subnets') or ()
                     for ip in s.get('ips') or ()]}
            for v in (record.get('spec') or {}).get('network_info') or ()]


def find_mapping(record, volume_id):
    """The block_device_mapping entry of ``volume_id``, or None."""
    return next((b for b in mappings(record) if volume_id_of(b) == volume_id), None)


def find_vif(record, vif_id):
    """The network_info entry of ``vif_id``, or None."""
    return next((v for v in (record.get('spec') or {}).get('network_info') or ()
                 if v['id'] == vif_id), None)
