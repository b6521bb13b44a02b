"""Shared pieces of the validation case tables (tests/unit/test_validation*.py):
well-formed requests, paths into them, and the reasons the tables expect."""

import base64
import copy

import pytest
from hypothesis import strategies as st

from compute_agent import exception
from compute_agent import validation


UUID = '6f2d8f55-1c4b-4d0e-9a53-7b0c2b2a9e01'
UUID2 = '0b5e7c1a-3d9f-4e2a-8c61-5a4f3e2d1c0b'
PORT_ID = 'b7e4c6a0-12ab-4cde-8f01-23456789abcd'
DELETE = object()


def b64(text):
    return base64.b64encode(text.encode()).decode()


def instance(**overrides):
    inst = {'uuid': UUID, 'name': 'vm-1',
            'flavor': {'memory_mb': 512, 'vcpus': 1, 'root_gb': 1}}
    inst.update(overrides)
    return inst


def full_spawn():
    """A spawn that uses every field the protocol docs name."""
    return {
        'instance': {
            'uuid': UUID, 'name': 'vm-1',
            'flavor': {'memory_mb': 512, 'vcpus': 2, 'root_gb': 1,
                       'ephemeral_gb': 1, 'swap': 256},
            'image_ref': 'cirros-0.6', 'kernel_id': 'aki-1', 'ramdisk_id': 'ari-1',
            'config_drive': True, 'user_data': b64('#!/bin/sh\necho hi\n'),
            'metadata': {'role': 'web'}, 'hostname': 'vm-1.example.org',
            'key_data': 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB user@host',
        },
        'image_meta': {
            'id': 'cirros-0.6', 'disk_format': 'qcow2',
            'checksum': 'd41d8cd98f00b204e9800998ecf8427e', 'size': 1024,
            'location': 'http://images.example.org/cirros-0.6',
            'properties': {'hw_disk_bus': 'virtio'},
        },
        'network_info': [{
            'id': PORT_ID, 'address': 'fa:16:3e:12:34:56', 'type': 'bridge',
            'devname': 'tapb7e4c6a0-12',
            'network': {'id': 'net-1', 'bridge': 'br100', 'label': 'private',
                        'mtu': 1500,
                        'subnets': [{'cidr': '10.0.0.0/24', 'gateway': '10.0.0.1',
                                     'ips': [{'address': '10.0.0.5'}],
                                     'dns': ['192.0.2.53']}]},
            'details': {},
        }],
        'block_device_info': {
            'root_device_name': '/dev/vda',
            'ephemerals': [{'num': 0, 'device_name': '/dev/vdb', 'size': 1}],
            'swap': {'device_name': '/dev/vdc', 'swap_size': 256},
            'block_device_mapping': [
                {'mount_device': '/dev/vdd', 'connection_info': {
                    'driver_volume_type': 'local',
                    'data': {'device_path': '/dev/mapper/vg-vol1'}}},
                {'mount_device': '/dev/vde', 'connection_info': {
                    'driver_volume_type': 'iscsi',
                    'data': {'target_portal': '192.0.2.5:3260',
                             'target_iqn': 'iqn.2010-10.org.openstack:volume-1',
                             'target_lun': 1, 'auth_method': 'CHAP',
                             'auth_username': 'chap-user',
                             'auth_password': 'chap-secret'}}},
                {'mount_device': '/dev/vdf', 'connection_info': {
                    'driver_volume_type': 'rbd',
                    'data': {'name': 'volumes/volume-1',
                             'hosts': ['192.0.2.6', 'mon1.example.org'],
                             'ports': ['6789', 6789], 'auth_enabled': True,
                             'auth_username': 'cinder', 'secret_uuid': UUID2}}},
                {'mount_device': '/dev/vdg', 'connection_info': {
                    'driver_volume_type': 'nfs',
                    'data': {'export': '192.0.2.7:/srv/nfs', 'name': 'volume-1'}}},
            ],
        },
        'admin_password': 'hunter2-secret',
        'injected_files': [['/etc/motd', b64('hello\n')]],
    }


def minimal(method):
    if method in ('get_info', 'get_vnc_console', 'get_console_output'):
        return {'instance_uuid': UUID}
    if method in ('list_instances', 'get_host_stats', 'ping'):
        return {}
    if method == 'update_security_rules':
        return {'instance_uuid': UUID, 'vif_id': 'port-1', 'rules': None}
    if method == 'spawn':
        return {'instance': instance(), 'image_meta': {'id': 'cirros'}}
    if method == 'attach_volume':
        return {'instance_uuid': UUID, 'volume_id': 'vol-1', 'connection_info': {
            'driver_volume_type': 'local', 'data': {'device_path': '/srv/vol-1'}}}
    if method == 'detach_volume':
        return {'instance_uuid': UUID, 'volume_id': 'vol-1'}
    if method == 'attach_interface':
        return {'instance_uuid': UUID, 'vif': {'id': 'port-1', 'address': 'fa:16:3e:00:00:01',
                                               'type': 'bridge'}}
    if method == 'detach_interface':
        return {'instance_uuid': UUID, 'vif_id': 'port-1'}
    if method == 'rebuild':
        return {'instance_uuid': UUID, 'image_meta': {'id': 'cirros'}}
    if method == 'snapshot':
        return {'instance_uuid': UUID, 'image_id': 'snap-1'}
    # -- resize
    if method == 'resize':
        return {'instance_uuid': UUID,
                'flavor': {'memory_mb': 256, 'vcpus': 2, 'root_gb': 2}}
    if method in ('confirm_resize', 'revert_resize'):
        return {'instance_uuid': UUID}
    # -- end of resize
    if method == 'set_admin_password':     # guest agent (issue 15)
        return {'instance_uuid': UUID, 'admin_password': 'n3w-pass word'}
    if method == 'live_migrate':
        return {'instance_uuid': UUID, 'dest_host': 'compute-2'}
    if method == 'live_migrate_abort':
        return {'instance_uuid': UUID}
    if method.startswith('_migration_'):
        return {'instance_uuid': UUID, 'migration': {}}
    # -- cold migration
    if method == 'migrate':
        return {'instance_uuid': UUID, 'dest_host': 'compute-2'}
    if method.startswith('_cold_migration_'):
        return {'instance_uuid': UUID, 'migration': {}}
    # -- end of cold migration
    return {'instance': instance()}


def with_value(args, path, value):
    """A deep copy of ``args`` with ``path`` set to ``value`` (or deleted)."""
    args = copy.deepcopy(args)
    target = args
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return args


def invalid(method, args):
    with pytest.raises(exception.InvalidRequest) as info:
        validation.validate(method, args)
    return info.value


PROTOCOL_METHODS = {
    'spawn', 'rescue', 'unrescue', 'reboot', 'power_off', 'power_on', 'pause',
    'unpause', 'suspend', 'resume', 'destroy', 'get_info', 'list_instances',
    'get_console_output', 'get_vnc_console', 'get_host_stats', 'ping',
    'update_security_rules',
    'attach_volume', 'detach_volume', 'attach_interface', 'detach_interface',
    'rebuild', 'snapshot', 'resize', 'confirm_resize', 'revert_resize',
    'set_admin_password',
    # live migration, and the agents' handshake for it
    'live_migrate', 'live_migrate_abort', '_migration_check',
    '_migration_prepare', '_migration_take_over', '_migration_rollback',
    # cold migration, and the agents' methods for it
    'migrate', '_cold_migration_receive', '_cold_migration_drop',
    '_cold_migration_restore', '_migration_status'}


INT_GT0 = 'must be an integer > 0'
INT_GE0 = 'must be an integer >= 0'
NAME_REASON = 'does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'
IMAGE_REASON = 'does not match ^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$'
INST = ('instance',)
VIF = ('network_info', 0)
BDI = ('block_device_info',)
BDM = ('block_device_info', 'block_device_mapping')


def vol(index):
    return BDM + (index, 'connection_info', 'data')


INSTANCE_DEFAULTS = {'image_ref': None, 'kernel_id': None, 'ramdisk_id': None,
                     'config_drive': False, 'user_data': None, 'metadata': {},
                     'hostname': None, 'key_data': None}
NORMALIZED_INSTANCE = dict(
    instance(flavor={'memory_mb': 512, 'vcpus': 1, 'root_gb': 1,
                     'ephemeral_gb': 0, 'swap': 0}),
    **INSTANCE_DEFAULTS)


def paths(value, prefix=()):
    """Every path into ``value`` (dict keys, list indexes), shortest first."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield prefix + (key,)
        yield from paths(item, prefix + (key,))


SPAWN_PATHS = list(paths(full_spawn()))

#: Any JSON value (small), for requests built at random.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)
