"""compute_agent.validation: every method's args, field by field."""

import base64
import copy
import json

import jsonschema
import pytest
from hypothesis import assume
from hypothesis import given
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


# -- the method table -------------------------------------------------------

def test_methods_are_those_of_the_protocol():
    assert set(validation.METHODS) == PROTOCOL_METHODS
    assert len(validation.METHODS) == len(PROTOCOL_METHODS)


@pytest.mark.parametrize('method', sorted(PROTOCOL_METHODS))
def test_schemas_are_valid_draft_2020_12(method):
    jsonschema.Draft202012Validator.check_schema(validation.SCHEMAS[method])
    assert validation.SCHEMAS[method]['$schema'].endswith('/draft/2020-12/schema')


INSTANCE_DEFAULTS = {'image_ref': None, 'kernel_id': None, 'ramdisk_id': None,
                     'config_drive': False, 'user_data': None, 'metadata': {},
                     'hostname': None, 'key_data': None}
NORMALIZED_INSTANCE = dict(
    instance(flavor={'memory_mb': 512, 'vcpus': 1, 'root_gb': 1,
                     'ephemeral_gb': 0, 'swap': 0}),
    **INSTANCE_DEFAULTS)

EXPECTED_MINIMAL = {
    'spawn': {'instance': NORMALIZED_INSTANCE,
              'image_meta': {'id': 'cirros', 'disk_format': None, 'checksum': None,
                             'size': None, 'location': None, 'properties': {}},
              'network_info': [], 'block_device_info': None,
              'admin_password': None, 'injected_files': []},
    'rescue': {'instance': NORMALIZED_INSTANCE, 'rescue_image_meta': None,
               'rescue_password': None},
    'unrescue': {'instance': NORMALIZED_INSTANCE},
    'reboot': {'instance': NORMALIZED_INSTANCE, 'reboot_type': 'SOFT'},
    'power_off': {'instance': NORMALIZED_INSTANCE, 'timeout': 60},
    'power_on': {'instance': NORMALIZED_INSTANCE},
    'pause': {'instance': NORMALIZED_INSTANCE},
    'unpause': {'instance': NORMALIZED_INSTANCE},
    'suspend': {'instance': NORMALIZED_INSTANCE},
    'resume': {'instance': NORMALIZED_INSTANCE},
    'destroy': {'instance': NORMALIZED_INSTANCE, 'network_info': [],
                'block_device_info': None, 'cleanup': True},
    'get_info': {'instance_uuid': UUID},
    'list_instances': {},
    'get_console_output': {'instance_uuid': UUID, 'tail_lines': 100},
    'get_vnc_console': {'instance_uuid': UUID},
    'get_host_stats': {},
    'ping': {},
    'update_security_rules': {'instance_uuid': UUID, 'vif_id': 'port-1',
                              'rules': None},
    'attach_volume': dict(minimal('attach_volume'), mountpoint=None),
    'detach_volume': minimal('detach_volume'),
    'attach_interface': {'instance_uuid': UUID, 'vif': dict(
        minimal('attach_interface')['vif'], details={})},
    'detach_interface': minimal('detach_interface'),
    'rebuild': {'instance_uuid': UUID,
                'image_meta': {'id': 'cirros', 'disk_format': None, 'checksum': None,
                               'size': None, 'location': None, 'properties': {}},
                'admin_password': None, 'preserve_ephemeral': False},
    'snapshot': dict(minimal('snapshot'), disk_format='qcow2', quiesce=None),
    # -- resize: the flavor gets the instance flavor's defaults
    'resize': {'instance_uuid': UUID, 'flavor': {
        'memory_mb': 256, 'vcpus': 2, 'root_gb': 2, 'ephemeral_gb': 0, 'swap': 0}},
    'confirm_resize': minimal('confirm_resize'),
    'revert_resize': minimal('revert_resize'),
    'set_admin_password': dict(minimal('set_admin_password'), user='root'),
    'live_migrate': dict(minimal('live_migrate'), block_migration=False),
    'live_migrate_abort': minimal('live_migrate_abort'),
    '_migration_check': minimal('_migration_check'),
    '_migration_prepare': minimal('_migration_prepare'),
    '_migration_take_over': minimal('_migration_take_over'),
    '_migration_rollback': minimal('_migration_rollback'),
    # cold migration
    'migrate': dict(minimal('migrate'), flavor=None),
    '_cold_migration_receive': minimal('_cold_migration_receive'),
    '_cold_migration_drop': minimal('_cold_migration_drop'),
    '_cold_migration_restore': minimal('_cold_migration_restore'),
    '_migration_status': minimal('_migration_status'),
}


@pytest.mark.parametrize('method', sorted(PROTOCOL_METHODS))
def test_minimal_request_gets_defaults(method):
    args = minimal(method)
    before = copy.deepcopy(args)
    assert validation.validate(method, args) == EXPECTED_MINIMAL[method]
    assert args == before, 'validate() must not modify its input'


@pytest.mark.parametrize('method', sorted(PROTOCOL_METHODS))
def test_normalized_args_validate_again_unchanged(method):
    once = validation.validate(method, minimal(method))
    assert validation.validate(method, once) == once


@pytest.mark.parametrize('method', sorted(PROTOCOL_METHODS))
def test_unexpected_argument(method):
    error = invalid(method, dict(minimal(method), frobnicate=1))
    assert (error.field, error.reason) == ('frobnicate', 'unexpected argument')


@pytest.mark.parametrize('method, arg', [
    (method, arg) for method in sorted(PROTOCOL_METHODS)
    for arg in minimal(method)])
def test_missing_required_argument(method, arg):
    error = invalid(method, with_value(minimal(method), (arg,), DELETE))
    assert (error.field, error.reason) == (arg, 'is required')


@pytest.mark.parametrize('method', ['', 'Spawn', 'spawn ', '_spawn', 'run', 'spawn.1',
                                    None, 5, ['spawn'], {'m': 1}])
def test_unknown_method(method):
    error = invalid(method, minimal('spawn'))
    assert error.field == 'method'
    assert error.reason == 'unknown method'
    assert error.uuid == UUID


@pytest.mark.parametrize('args', [[], 'x', 5, ['instance']])
def test_args_must_be_an_object(args):
    error = invalid('ping', args)
    assert (error.field, error.reason) == ('args', 'must be an object')


def test_missing_args_are_no_args():
    assert validation.validate('ping', None) == {}
    assert invalid('get_info', None).field == 'instance_uuid'


# -- a full spawn -----------------------------------------------------------

def test_full_spawn_passes_and_keeps_values():
    args = full_spawn()
    result = validation.validate('spawn', args)
    assert result['instance'] == args['instance']
    assert result['image_meta'] == args['image_meta']
    assert result['network_info'] == args['network_info']
    assert result['admin_password'] == 'hunter2-secret'
    assert result['injected_files'] == args['injected_files']
    bdi = result['block_device_info']
    assert bdi['ephemerals'] == args['block_device_info']['ephemerals']
    mapping = bdi['block_device_mapping']
    assert mapping[0] == args['block_device_info']['block_device_mapping'][0]
    assert mapping[1]['connection_info']['data']['target_lun'] == 1
    assert mapping[2]['connection_info']['data']['ports'] == ['6789', 6789]


def test_partial_block_device_info_gets_defaults():
    args = dict(minimal('spawn'), block_device_info={})
    assert validation.validate('spawn', args)['block_device_info'] == {
        'root_device_name': None, 'ephemerals': [], 'swap': None,
        'block_device_mapping': []}


def test_volume_data_defaults_per_driver_type():
    bdi = validation.validate('spawn', dict(minimal('spawn'), block_device_info={
        'block_device_mapping': [
            {'mount_device': '/dev/vdb', 'connection_info': {
                'driver_volume_type': 'iscsi',
                'data': {'target_portal': 'san:3260', 'target_iqn': 'iqn.2004-01.com.x:t'}}},
            {'mount_device': '/dev/vdc', 'connection_info': {
                'driver_volume_type': 'rbd', 'data': {'name': 'p/i'}}}]}))[
        'block_device_info']
    iscsi, rbd = (m['connection_info']['data'] for m in bdi['block_device_mapping'])
    assert iscsi['target_lun'] == 0
    assert iscsi['auth_password'] is None
    assert (rbd['hosts'], rbd['ports']) == ([], [])


def test_vif_defaults():
    vif = {'id': PORT_ID, 'address': 'fa:16:3e:00:00:01', 'type': 'ovs',
           'network': {'subnets': [{'cidr': '10.0.0.0/24'}]}}
    result = validation.validate('spawn', dict(minimal('spawn'), network_info=[vif]))
    assert result['network_info'] == [{
        'id': PORT_ID, 'address': 'fa:16:3e:00:00:01', 'type': 'ovs', 'details': {},
        'network': {'subnets': [{'cidr': '10.0.0.0/24', 'ips': [], 'dns': []}]}}]


def test_normalizes_case_of_uuids_and_macs():
    args = full_spawn()
    args['instance']['uuid'] = UUID.upper()
    args['network_info'][0]['address'] = 'FA:16:3E:AB:CD:EF'
    rbd = args['block_device_info']['block_device_mapping'][2]['connection_info']
    rbd['data']['secret_uuid'] = UUID2.upper()
    result = validation.validate('spawn', args)
    assert result['instance']['uuid'] == UUID
    assert result['network_info'][0]['address'] == 'fa:16:3e:ab:cd:ef'
    assert result['block_device_info']['block_device_mapping'][2][
        'connection_info']['data']['secret_uuid'] == UUID2
    assert validation.validate('get_info', {'instance_uuid': UUID.upper()}) == {
        'instance_uuid': UUID}


def test_unknown_keys_inside_objects_are_ignored_and_kept():
    args = full_spawn()
    args['instance']['vm_state'] = 'building'
    args['instance']['flavor']['extra_specs'] = {'hw:cpu_policy': 'dedicated'}
    args['image_meta']['container_format'] = 'bare'
    args['network_info'][0]['ovs_interfaceid'] = PORT_ID
    args['network_info'][0]['network']['meta'] = {'injected': False}
    result = validation.validate('spawn', args)
    assert result['instance']['vm_state'] == 'building'
    assert result['image_meta']['container_format'] == 'bare'
    assert result['network_info'][0]['ovs_interfaceid'] == PORT_ID


# -- bad fields -------------------------------------------------------------

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


# (path into full_spawn(), bad value, field reported, reason or None)
SPAWN_BAD = [
    (INST, 'vm-1', 'instance', 'must be an object'),
    (INST, None, 'instance', 'must be an object'),
    (INST + ('uuid',), DELETE, 'instance.uuid', 'is required'),
    (INST + ('name',), DELETE, 'instance.name', 'is required'),
    (INST + ('flavor',), DELETE, 'instance.flavor', 'is required'),
    (INST + ('flavor',), 'm1.tiny', 'instance.flavor', 'must be an object'),
    (INST + ('flavor', 'memory_mb'), DELETE, 'instance.flavor.memory_mb', 'is required'),
    (INST + ('flavor', 'vcpus'), DELETE, 'instance.flavor.vcpus', 'is required'),
    (INST + ('flavor', 'root_gb'), DELETE, 'instance.flavor.root_gb', 'is required'),
]
for _value in ['not-a-uuid', 5, None, '{%s}' % UUID, 'urn:uuid:' + UUID, UUID + '\n',
               UUID.replace('-', ''), UUID[:-1] + 'g', ' ' + UUID, UUID + 'a']:
    SPAWN_BAD.append((INST + ('uuid',), _value, 'instance.uuid', None))
for _value in ['', '.', '..', '../x', 'a/b', '.hidden', '-x', '_x', 'a' * 64, 'vm\n',
               'vm\x00', 'vm 1', 'vm\u00e9', 'vm:1', 'vm$', '\u0660', 5, None, ['vm']]:
    SPAWN_BAD.append((INST + ('name',), _value, 'instance.name',
                      NAME_REASON if isinstance(_value, str) else 'must be a string'))
for _key, _reason, _values in [
        ('memory_mb', INT_GT0, [0, -1, '512', 1.5, 512.0, True, None]),
        ('vcpus', INT_GT0, [0, -4, '1', 1.0, False]),
        ('root_gb', INT_GE0, [-1, '1', 0.5, None]),
        ('ephemeral_gb', INT_GE0, [-1, '0', None]),
        ('swap', INT_GE0, [-1, '512', 1.0]),
]:
    for _value in _values:
        SPAWN_BAD.append((INST + ('flavor', _key), _value, 'instance.flavor.' + _key, _reason))
SPAWN_BAD += [(INST + ('flavor', 'memory_mb'), 2 ** 31, 'instance.flavor.memory_mb',
               'must be at most 2147483647'),
              (INST + ('flavor', 'swap'), 2 ** 64, 'instance.flavor.swap', None)]
for _key in ('image_ref', 'kernel_id', 'ramdisk_id'):
    for _value in ['', '../../etc/passwd', 'a/b', '.x', 'a' * 129, 'img\n', 'img 1',
                   '/boot/vmlinuz', 'http://x/y', 5, ['x']]:
        SPAWN_BAD.append((INST + (_key,), _value, 'instance.' + _key,
                          IMAGE_REASON if isinstance(_value, str)
                          else 'must be a string or null'))
SPAWN_BAD += [
    (INST + ('config_drive',), 'True', 'instance.config_drive', 'must be a boolean'),
    (INST + ('config_drive',), 1, 'instance.config_drive', 'must be a boolean'),
    (INST + ('config_drive',), None, 'instance.config_drive', 'must be a boolean'),
    (INST + ('user_data',), 'not base64!', 'instance.user_data', 'must be base64-encoded'),
    (INST + ('user_data',), 'abc', 'instance.user_data', 'must be base64-encoded'),
    (INST + ('user_data',), '\u00e9t\u00e9', 'instance.user_data', 'must be base64-encoded'),
    (INST + ('user_data',), 5, 'instance.user_data', 'must be a string or null'),
    (INST + ('user_data',), 'A' * 65536, 'instance.user_data',
     'must be at most 65535 characters'),
    (INST + ('metadata',), 'role=web', 'instance.metadata', 'must be an object'),
    (INST + ('metadata',), None, 'instance.metadata', 'must be an object'),
    (INST + ('metadata',), {'k': 5}, 'instance.metadata.k', 'must be a string'),
    (INST + ('metadata',), {'k': None}, 'instance.metadata.k', 'must be a string'),
    (INST + ('metadata',), {'a b': []}, 'instance.metadata["a b"]', 'must be a string'),
    (INST + ('metadata',), {'': 'v'}, 'instance.metadata', 'keys must be 1-255 characters'),
    (INST + ('metadata',), {'k' * 256: 'v'}, 'instance.metadata',
     'keys must be 1-255 characters'),
    (INST + ('metadata',), {'k': 'v' * 256}, 'instance.metadata.k',
     'must be at most 255 characters'),
    (INST + ('key_data',), 5, 'instance.key_data', 'must be a string or null'),
]
for _value in ['a_b', '-a', 'a-', 'a' * 64, 'a..b', '', '.a', 'a.', 'a b', 'h\u00e9',
               ('a' * 60 + '.') * 5]:
    SPAWN_BAD.append((INST + ('hostname',), _value, 'instance.hostname',
                      'must be a host name (RFC 1123)'))
SPAWN_BAD.append((INST + ('hostname',), 5, 'instance.hostname', 'must be a string or null'))

# image_meta
SPAWN_BAD += [
    (('image_meta',), DELETE, 'image_meta', 'is required'),
    (('image_meta',), None, 'image_meta', 'must be an object'),
    (('image_meta',), 'cirros', 'image_meta', 'must be an object'),
    (('image_meta', 'id'), DELETE, 'image_meta.id', 'is required'),
    (('image_meta', 'id'), None, 'image_meta.id', 'must be a string'),
    (('image_meta', 'disk_format'), 'vmdk', 'image_meta.disk_format',
     'must be one of: qcow2, raw, iso, ami, aki, ari, or null'),
    (('image_meta', 'disk_format'), 'QCOW2', 'image_meta.disk_format', None),
    (('image_meta', 'disk_format'), 5, 'image_meta.disk_format',
     'must be one of: qcow2, raw, iso, ami, aki, ari, or null'),
    (('image_meta', 'size'), -1, 'image_meta.size', None),
    (('image_meta', 'size'), '1024', 'image_meta.size', None),
    (('image_meta', 'location'), 'not a url', 'image_meta.location',
     'must be an absolute URL'),
    (('image_meta', 'location'), '/var/lib/images/x', 'image_meta.location',
     'must be an absolute URL'),
    (('image_meta', 'location'), 'http://x/a\nb', 'image_meta.location', None),
    (('image_meta', 'location'), 5, 'image_meta.location', None),
    (('image_meta', 'properties'), 'x', 'image_meta.properties', 'must be an object'),
]
for _value in ['', '../x', 'a/b', 'a b', '.', 'x' * 129, 5]:
    SPAWN_BAD.append((('image_meta', 'id'), _value, 'image_meta.id', None))
for _value in ['ABC', 'D41D8CD98F00B204E9800998ECF8427E', 'sha256:' + 'a' * 63,
               'sha256:' + 'A' * 64, 'md5:d41d8cd98f00b204e9800998ecf8427e',
               'd41d8cd98f00b204e9800998ecf8427e\n', 'sha1:' + 'a' * 40, 5]:
    SPAWN_BAD.append((('image_meta', 'checksum'), _value, 'image_meta.checksum', None))

# network_info
SPAWN_BAD += [
    (('network_info',), {}, 'network_info', 'must be a list'),
    (('network_info',), None, 'network_info', 'must be a list'),
    (('network_info',), [5], 'network_info[0]', 'must be an object'),
    (VIF + ('id',), DELETE, 'network_info[0].id', 'is required'),
    (VIF + ('address',), DELETE, 'network_info[0].address', 'is required'),
    (VIF + ('type',), DELETE, 'network_info[0].type', 'is required'),
    (VIF + ('network',), 'net', 'network_info[0].network', 'must be an object'),
    (VIF + ('details',), [], 'network_info[0].details', 'must be an object'),
    (VIF + ('network', 'label'), 'a\nb', 'network_info[0].network.label',
     'must be null or text without control characters, at most 255 characters'),
    (VIF + ('network', 'id'), 5, 'network_info[0].network.id', None),
]
for _value in ['', '../x', 'a/b', 'a b', 5, None]:
    SPAWN_BAD.append((VIF + ('id',), _value, 'network_info[0].id', None))
for _value in ['fa:16:3e:12:34', 'zz:16:3e:12:34:56', 'fa-16-3e-12-34-56',
               'fa16.3e12.3456', 'fa:16:3e:12:34:56\n', 'fa:16:3e:12:34:56:78', 5, None]:
    SPAWN_BAD.append((VIF + ('address',), _value, 'network_info[0].address', None))
for _value in ['01:00:5e:00:00:01', 'ff:ff:ff:ff:ff:ff', '33:33:00:00:00:01',
               '00:00:00:00:00:00']:
    SPAWN_BAD.append((VIF + ('address',), _value, 'network_info[0].address',
                      'must not be a multicast or all-zero MAC address'))
for _value in ['Bridge', '', 'a-b', '1ovs', 'x' * 33, 'ovs\n', 5, None]:
    SPAWN_BAD.append((VIF + ('type',), _value, 'network_info[0].type', None))
for _value in ['tap0123456789ab', '0tap', 'tap/x', 'tap x', '', 'tap:1', 'tap\n', 5, None]:
    SPAWN_BAD.append((VIF + ('devname',), _value, 'network_info[0].devname', None))
for _value in ['br 0', 'b' * 15, '../br', 'br/0', 5]:
    SPAWN_BAD.append((VIF + ('network', 'bridge'), _value, 'network_info[0].network.bridge',
                      None))
for _value in [67, 0, -1, 65536, '1500', 1500.0, True]:
    SPAWN_BAD.append((VIF + ('network', 'mtu'), _value, 'network_info[0].network.mtu',
                      'must be an integer between 68 and 65535 or null'))
_S = VIF + ('network', 'subnets', 0)
_SF = 'network_info[0].network.subnets[0]'
SPAWN_BAD += [
    (VIF + ('network', 'subnets'), {}, 'network_info[0].network.subnets', 'must be a list'),
    (_S + ('cidr',), DELETE, _SF + '.cidr', 'is required'),
    (_S + ('ips', 0, 'address'), DELETE, _SF + '.ips[0].address', 'is required'),
    (_S + ('ips',), ['10.0.0.5'], _SF + '.ips[0]', 'must be an object'),
    (_S + ('dns',), '192.0.2.53', _SF + '.dns', 'must be a list'),
]
for _value in ['10.0.0.1/24', '10.0.0.0', 'x/24', '10.0.0.0/33', '10.0.0.0/-1',
               '2001:db8::1/64', 'fe80::%eth0/64', '', 5]:
    SPAWN_BAD.append((_S + ('cidr',), _value, _SF + '.cidr', None))
for _key, _field in [(('gateway',), '.gateway'), (('ips', 0, 'address'), '.ips[0].address'),
                     (('dns', 0), '.dns[0]')]:
    for _value in ['10.0.0.256', 'gw.example.org', '10.0.0.1/32', 'fe80::1%eth0',
                   '10.0.0.1\n', '', 167772161]:
        SPAWN_BAD.append((_S + _key, _value, _SF + _field, None))

# block_device_info
_DEV = 'does not match ^/dev/(vd|xvd|sd|hd|ubd)[a-z]$'
SPAWN_BAD += [
    (BDI, 'x', 'block_device_info', 'must be an object or null'),
    (BDI, [], 'block_device_info', 'must be an object or null'),
    (BDI + ('ephemerals',), {}, 'block_device_info.ephemerals', 'must be a list'),
    (BDI + ('ephemerals', 0, 'num'), -1, 'block_device_info.ephemerals[0].num', INT_GE0),
    (BDI + ('ephemerals', 0, 'num'), DELETE, 'block_device_info.ephemerals[0].num',
     'is required'),
    (BDI + ('ephemerals', 0, 'size'), -1, 'block_device_info.ephemerals[0].size', INT_GE0),
    (BDI + ('ephemerals', 0, 'size'), '1', 'block_device_info.ephemerals[0].size', INT_GE0),
    (BDI + ('ephemerals', 0, 'size'), DELETE, 'block_device_info.ephemerals[0].size',
     'is required'),
    (BDI + ('ephemerals', 0, 'device_name'), DELETE,
     'block_device_info.ephemerals[0].device_name', 'is required'),
    (BDI + ('swap',), 'x', 'block_device_info.swap', 'must be an object or null'),
    (BDI + ('swap', 'swap_size'), 0, 'block_device_info.swap.swap_size', INT_GT0),
    (BDI + ('swap', 'swap_size'), DELETE, 'block_device_info.swap.swap_size', 'is required'),
    (BDI + ('swap', 'device_name'), DELETE, 'block_device_info.swap.device_name',
     'is required'),
    (BDM, {}, 'block_device_info.block_device_mapping', 'must be a list'),
    (BDM + (0, 'mount_device'), DELETE, 'block_device_info.block_device_mapping[0]'
     '.mount_device', 'is required'),
    (BDM + (0, 'connection_info'), DELETE, 'block_device_info.block_device_mapping[0]'
     '.connection_info', 'is required'),
    (BDM + (0, 'connection_info', 'driver_volume_type'), 'fibre_channel',
     'block_device_info.block_device_mapping[0].connection_info.driver_volume_type',
     'unknown volume driver type (installed: iscsi, local, nbd, nfs, rbd)'),
    (BDM + (3, 'connection_info', 'driver_volume_type'), 'no_such_type',
     'block_device_info.block_device_mapping[3].connection_info.driver_volume_type',
     'unknown volume driver type (installed: iscsi, local, nbd, nfs, rbd)'),
    (BDM + (0, 'connection_info', 'driver_volume_type'), 'Local',
     'block_device_info.block_device_mapping[0].connection_info.driver_volume_type',
     'does not match ^[a-z][a-z0-9_]{0,31}$'),
    (BDM + (0, 'connection_info', 'driver_volume_type'), 'local\n',
     'block_device_info.block_device_mapping[0].connection_info.driver_volume_type',
     'does not match ^[a-z][a-z0-9_]{0,31}$'),
    (BDM + (0, 'connection_info', 'driver_volume_type'), 5,
     'block_device_info.block_device_mapping[0].connection_info.driver_volume_type',
     'must be a string'),
    (BDM + (0, 'volume_id'), '../vol',
     'block_device_info.block_device_mapping[0].volume_id',
     'does not match ^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$'),
    (BDM + (0, 'volume_id'), 5,
     'block_device_info.block_device_mapping[0].volume_id', 'must be a string'),
    (BDM + (0, 'connection_info', 'driver_volume_type'), DELETE,
     'block_device_info.block_device_mapping[0].connection_info.driver_volume_type',
     'is required'),
    (BDM + (0, 'connection_info', 'data'), DELETE,
     'block_device_info.block_device_mapping[0].connection_info.data', 'is required'),
    (BDM + (0, 'connection_info', 'data'), 'x',
     'block_device_info.block_device_mapping[0].connection_info.data',
     'must be an object'),
]
for _value in ['/dev/../etc/passwd', 'vda', '/dev/vda1', '/dev/VDA', '/dev/nvme0n1',
               '/dev/vd', '/dev/vdaa', '/dev/vda/', '/dev/vda\n', '/dev//vda', 5]:
    SPAWN_BAD.append((BDI + ('root_device_name',), _value, 'block_device_info.root_device_name',
                      _DEV if isinstance(_value, str) else None))
    for _path, _field in [(('ephemerals', 0, 'device_name'), 'ephemerals[0].device_name'),
                          (('swap', 'device_name'), 'swap.device_name'),
                          (('block_device_mapping', 1, 'mount_device'),
                           'block_device_mapping[1].mount_device')]:
        SPAWN_BAD.append((BDI + _path, _value, 'block_device_info.' + _field, None))

_VF = 'block_device_info.block_device_mapping[%d].connection_info.data.%s'
for _index, _key, _values in [
        (0, 'device_path', ['relative/path', '/dev/../etc/shadow', '/dev//sdb', '/dev/sdb/',
                            '/dev/./sdb', '/a\x00b', '/a\nb', '', DELETE, 5]),
        (1, 'target_portal', ['san', 'san:', 'san:0', 'san:70000', '::1:3260', 'san:32x',
                              '[fe80::1%eth0]:3260', 'a b:3260', DELETE, 5]),
        (1, 'target_iqn', ['foo', 'iqn.2010.org:x', 'iqn.2010-10.org x', DELETE, 5]),
        (1, 'target_lun', [-1, '1', 16384, 1.0]),
        (1, 'auth_password', [5, 'p' * 256]),
        (1, 'auth_username', ['chap\nuser', 'u\x00', 'u' * 256, 5]),
        (1, 'auth_method', ['CHAP\x7f', 'x' * 33]),
        (1, 'secret_usage', ['a\tb']),
        (2, 'name', ['volume', 'a/b/c', '../x/y', 'p/', '/i', 'p i/x', DELETE, 5]),
        (2, 'hosts', ['mon1', [5], ['bad host'], ['mon1:6789']]),
        (2, 'ports', ['6789', [0], ['70000'], [True], ['67 89'], [None]]),
        (2, 'secret_uuid', ['x', 5, UUID + '\n']),
        (2, 'auth_username', ['a b', '', 5, 'x' * 65]),
        (2, 'auth_enabled', ['yes']),
        (3, 'export', ['host', 'host:relative', 'host:/a/../b', ':/x', 'a b:/x', '[::1:/x',
                       DELETE, 5]),
        (3, 'name', ['../x', 'a/b', '.x', '', DELETE, 5]),
        (3, 'options', ['vers=4 ;reboot', 'a\nb', 5]),
]:
    for _value in _values:
        _field = _VF % (_index, _key)
        if isinstance(_value, list) and _value and _key in ('hosts', 'ports'):
            _field += '[0]'
        SPAWN_BAD.append((vol(_index) + (_key,), _value, _field,
                          'is required' if _value is DELETE else None))

# passwords and injected files
SPAWN_BAD += [
    (('admin_password',), 5, 'admin_password', None),
    (('admin_password',), ['pw'], 'admin_password', None),
    (('admin_password',), 'p' * 256, 'admin_password', None),
    (('injected_files',), 'x', 'injected_files', 'must be a list'),
    (('injected_files',), None, 'injected_files', 'must be a list'),
    (('injected_files',), [5], 'injected_files[0]',
     'must be a [path, base64 contents] pair'),
    (('injected_files',), [['/etc/x']], 'injected_files[0]',
     'must be a [path, base64 contents] pair'),
    (('injected_files',), [['/etc/x', 'aGk=', 'x']], 'injected_files[0]',
     'must be a [path, base64 contents] pair'),
    (('injected_files',), [{'path': '/etc/x', 'contents': 'aGk='}], 'injected_files[0]',
     'must be a [path, base64 contents] pair'),
    (('injected_files',), [['etc/x', 'aGk=']], 'injected_files[0][0]',
     'must be a normalized absolute path without ".."'),
    (('injected_files',), [['/etc/../x', 'aGk=']], 'injected_files[0][0]', None),
    (('injected_files',), [['/etc/x', 'not base64!']], 'injected_files[0][1]',
     'must be base64-encoded'),
    (('injected_files',), [['/etc/x', 5]], 'injected_files[0][1]', 'must be a string'),
]


def _case_id(case):
    path, value, field, _ = case
    text = 'DELETE' if value is DELETE else repr(value)
    return '%s=%s' % ('.'.join(map(str, path)), text[:40])


@pytest.mark.parametrize('path, value, field, reason', SPAWN_BAD,
                         ids=[_case_id(c) for c in SPAWN_BAD])
def test_spawn_bad_field(path, value, field, reason):
    error = invalid('spawn', with_value(full_spawn(), path, value))
    assert error.field == field
    if reason is not None:
        assert error.reason == reason
    assert error.reason
    expected_uuid = None if path == INST + ('uuid',) or path == INST else UUID
    assert error.uuid == expected_uuid
    assert str(error) == 'Invalid request: %s: %s' % (field, error.reason)


# (path, good value) that must pass
SPAWN_GOOD = [
    (INST + ('uuid',), UUID.upper()),
    (INST + ('name',), 'a' * 63),
    (INST + ('name',), 'A.b_c-9'),
    (INST + ('name',), 'instance-00000001'),
    (INST + ('name',), '0'),
    (INST + ('flavor', 'root_gb'), 0),
    (INST + ('flavor', 'memory_mb'), 2 ** 31 - 1),
    (INST + ('kernel_id',), None),
    (INST + ('ramdisk_id',), None),
    (INST + ('image_ref',), None),
    (INST + ('image_ref',), DELETE),
    (INST + ('user_data',), None),
    (INST + ('user_data',), b64('x' * 200)[:76] + '\n' + b64('x' * 200)[76:]),
    (INST + ('user_data',), ''),
    (INST + ('hostname',), 'a'),
    (INST + ('hostname',), 'vm-1'),
    (INST + ('hostname',), '1vm.example.org'),
    (INST + ('hostname',), None),
    (INST + ('metadata',), {}),
    (INST + ('key_data',), None),
    (('image_meta', 'checksum'), 'sha256:' + 'a' * 64),
    (('image_meta', 'checksum'), None),
    (('image_meta', 'size'), None),
    (('image_meta', 'size'), 0),
    (('image_meta', 'location'), None),
    (('image_meta', 'location'), 'file:///var/lib/compute-agent/images/x'),
    (('image_meta', 'location'), 'https://user@images.example.org:8443/v2/x?y=1'),
    (('network_info',), []),
    (VIF + ('devname',), 'tap' + 'x' * 11),
    (VIF + ('devname',), 'eth0'),
    (VIF + ('devname',), DELETE),
    (VIF + ('network',), DELETE),
    (VIF + ('details',), {'port_filter': True}),
    (VIF + ('address',), 'FA:16:3E:12:34:56'),
    (VIF + ('address',), '02:00:00:00:00:01'),
    (VIF + ('type',), 'vhostuser'),
    (VIF + ('type',), 'my_plugin2'),
    (VIF + ('network', 'bridge'), None),
    (VIF + ('network', 'bridge'), 'b' * 14),
    (VIF + ('network', 'bridge'), 'br-int'),
    (VIF + ('network', 'mtu'), None),
    (VIF + ('network', 'mtu'), 68),
    (VIF + ('network', 'mtu'), 65535),
    (VIF + ('network', 'mtu'), 9000),
    (_S + ('cidr',), '2001:db8::/64'),
    (_S + ('cidr',), '0.0.0.0/0'),
    (_S + ('gateway',), None),
    (_S + ('gateway',), '2001:db8::1'),
    (_S + ('ips', 0, 'address'), '2001:db8::5'),
    (_S + ('dns',), ['2001:4860:4860::8888', '192.0.2.53']),
    (BDI, None),
    (BDI + ('root_device_name',), None),
    (BDI + ('swap',), None),
    (BDI + ('ephemerals',), []),
    (BDI + ('ephemerals', 0, 'device_name'), '/dev/xvdb'),
    (BDI + ('ephemerals', 0, 'device_name'), '/dev/sdb'),
    (BDI + ('ephemerals', 0, 'device_name'), '/dev/hdb'),
    (BDI + ('ephemerals', 0, 'device_name'), '/dev/ubdb'),
    (BDI + ('ephemerals', 0, 'size'), 0),
    (vol(0) + ('device_path',), '/var/lib/volumes/vol1.img'),
    (vol(1) + ('target_portal',), '[2001:db8::1]:3260'),
    (vol(1) + ('target_portal',), 'san.example.org:3260'),
    (vol(1) + ('target_iqn',), 'eui.02004567A425678D'),
    (vol(1) + ('target_iqn',), 'naa.52004567BA64678D'),
    (vol(1) + ('target_lun',), 0),
    (vol(1) + ('auth_password',), None),
    (vol(2) + ('ports',), [6789, '3300']),
    (vol(2) + ('hosts',), ['2001:db8::6']),
    (vol(2) + ('secret_uuid',), None),
    (vol(3) + ('export',), '[2001:db8::7]:/srv/nfs'),
    (vol(3) + ('export',), 'nfs.example.org:/'),
    (vol(3) + ('options',), 'vers=4.1,proto=tcp'),
    (BDM + (0, 'volume_id'), 'vol-1'),
    (BDM + (0, 'volume_id'), UUID),
    (vol(1) + ('auth_username',), 'chap user \u00e9'),
    (('admin_password',), None),
    (('admin_password',), ''),
    (('admin_password',), 'p' * 255),
    (('injected_files',), []),
    (('injected_files',), [['/root/.ssh/authorized_keys', ''], ['/etc/x y', 'aGk=']]),
]


@pytest.mark.parametrize('path, value', SPAWN_GOOD,
                         ids=[_case_id(c + (None, None)) for c in SPAWN_GOOD])
def test_spawn_good_field(path, value):
    args = with_value(full_spawn(), path, value)
    result = validation.validate('spawn', args)
    assert validation.validate('spawn', result) == result


# -- image ids (docs: protocol-objects) ------------------------------------------

GOOD_IMAGE_IDS = ['a', '0', 'a' * 128, UUID, 'cirros-0.6', 'img.qcow2', 'a_b', 'rc~1',
                  'A.B-C_D~E']
BAD_IMAGE_IDS = ['', '.', '..', '../x', 'a/b', '.x', '-x', '_x', '~x', 'a' * 129, 'img\n',
                 'img 1', 'a:b', 'a%2Fb', 'a?b', 'a#b', '/boot/vmlinuz', 'http://x/y',
                 'caf\u00e9', 'a\x00b']


def spawn_with_image(field, value):
    """full_spawn() with the image id ``field`` set; image_meta.id follows
    instance.image_ref, so only the field under test can be wrong."""
    args = full_spawn()
    if field == 'instance.image_ref':
        args['instance']['image_ref'] = args['image_meta']['id'] = value
    elif field == 'image_meta.id':
        args['instance']['image_ref'] = None
        args['image_meta']['id'] = value
    else:
        args['instance'][field.split('.')[1]] = value
    return args


IMAGE_FIELDS = ['instance.image_ref', 'instance.kernel_id', 'instance.ramdisk_id',
                'image_meta.id']


@pytest.mark.parametrize('field', IMAGE_FIELDS)
@pytest.mark.parametrize('value', GOOD_IMAGE_IDS)
def test_good_image_ids(field, value):
    result = validation.validate('spawn', spawn_with_image(field, value))
    inst = result['instance']
    assert {'instance.image_ref': inst['image_ref'], 'instance.kernel_id': inst['kernel_id'],
            'instance.ramdisk_id': inst['ramdisk_id'],
            'image_meta.id': result['image_meta']['id']}[field] == value


@pytest.mark.parametrize('field', IMAGE_FIELDS)
@pytest.mark.parametrize('value', BAD_IMAGE_IDS)
def test_bad_image_ids(field, value):
    args = spawn_with_image(field, value)
    if field == 'instance.image_ref':
        args['image_meta']['id'] = 'cirros'     # only image_ref is malformed
    error = invalid('spawn', args)
    assert error.field == field
    assert error.reason == IMAGE_REASON
    assert error.uuid == UUID


@pytest.mark.parametrize('value', GOOD_IMAGE_IDS + BAD_IMAGE_IDS)
def test_rescue_image_id_follows_the_same_rule(value):
    args = {'instance': instance(), 'rescue_image_meta': {'id': value}}
    if value in GOOD_IMAGE_IDS:
        assert validation.validate('rescue', args)['rescue_image_meta']['id'] == value
    else:
        error = invalid('rescue', args)
        assert (error.field, error.reason) == ('rescue_image_meta.id', IMAGE_REASON)


# (instance.image_ref, image_meta.id, expected: None = valid, else field, reason)
IMAGE_META_ID_CASES = [
    ('cirros', 'cirros', None),
    (None, 'cirros', None),                 # no image_ref: nothing to compare
    (DELETE, 'cirros', None),
    ('cirros', 'other', ('image_meta.id', 'must equal instance.image_ref')),
    ('cirros', 'Cirros', ('image_meta.id', 'must equal instance.image_ref')),
    ('cirros', 'cirros.', ('image_meta.id', 'must equal instance.image_ref')),
    ('a' * 128, 'a' * 127, ('image_meta.id', 'must equal instance.image_ref')),
    # a malformed id is reported as such, before the comparison
    ('../x', 'cirros', ('instance.image_ref', IMAGE_REASON)),
    ('cirros', '../x', ('image_meta.id', IMAGE_REASON)),
]


@pytest.mark.parametrize('image_ref, image_id, expected', IMAGE_META_ID_CASES)
def test_image_meta_id_must_equal_image_ref(image_ref, image_id, expected):
    args = minimal('spawn')
    if image_ref is not DELETE:
        args['instance']['image_ref'] = image_ref
    args['image_meta']['id'] = image_id
    if expected is None:
        assert validation.validate('spawn', args)['image_meta']['id'] == image_id
        return
    error = invalid('spawn', args)
    assert (error.field, error.reason) == expected
    assert error.uuid == UUID
    assert 'other' not in str(error) and 'Cirros' not in str(error)


def test_rescue_image_may_differ_from_image_ref():
    args = {'instance': instance(image_ref='cirros'),
            'rescue_image_meta': {'id': 'rescue-image'}}
    assert validation.validate('rescue', args)['rescue_image_meta']['id'] == 'rescue-image'


# -- volume driver types: the installed plugins -------------------------------------

VTYPE = 'block_device_info.block_device_mapping[%d].connection_info.driver_volume_type'


@pytest.fixture
def installed_volume_types(monkeypatch):
    """Pretend that nbd and a third-party type are installed too (the
    entry point list is all validation reads)."""
    from compute_agent import plugins
    real = plugins.names

    def names(namespace):
        extra = ['nbd', 'thirdparty'] if namespace == plugins.VOLUME_DRIVERS else []
        return sorted(set(real(namespace)) | set(extra))
    monkeypatch.setattr(plugins, 'names', names)


def spawn_with_volume(connection_info, index=0):
    args = full_spawn()
    args['block_device_info']['block_device_mapping'][index]['connection_info'] = \
        connection_info
    return args


@pytest.mark.parametrize('connection_info', [
    {'driver_volume_type': 'thirdparty', 'data': {}},
    {'driver_volume_type': 'thirdparty', 'data': {'anything': ['its', 'own', 'rules']}},
    {'driver_volume_type': 'nbd', 'data': {'host': '192.0.2.9', 'port': 10809,
                                           'export': 'vol1'}},
    {'driver_volume_type': 'nbd', 'data': {'host': 'nbd.example.org', 'port': '10809'}},
    {'driver_volume_type': 'nbd', 'data': {'socket': '/run/nbd/vol1.sock', 'export': ''}},
])
def test_installed_volume_types_are_accepted(installed_volume_types, connection_info):
    result = validation.validate('spawn', spawn_with_volume(connection_info))
    bdm = result['block_device_info']['block_device_mapping'][0]
    assert bdm['connection_info']['driver_volume_type'] == connection_info['driver_volume_type']


@pytest.mark.parametrize('data, field', [
    ({}, 'data'),
    ({'host': '192.0.2.9'}, 'data'),
    ({'host': '192.0.2.9', 'port': 10809, 'socket': '/run/x.sock'}, 'data'),
    ({'host': 'bad host', 'port': 10809}, 'data.host'),
    ({'host': '192.0.2.9', 'port': 0}, 'data.port'),
    ({'host': '192.0.2.9', 'port': '70000'}, 'data.port'),
    ({'socket': 'relative.sock'}, 'data.socket'),
    ({'socket': '/run/../etc/x'}, 'data.socket'),
    ({'socket': '/run/x.sock', 'export': 'a\nb'}, 'data.export'),
])
def test_nbd_data_shape(installed_volume_types, data, field):
    error = invalid('spawn', spawn_with_volume({'driver_volume_type': 'nbd', 'data': data}))
    assert error.field == ('block_device_info.block_device_mapping[0].connection_info.'
                           + field)


@pytest.mark.parametrize('method', ['spawn', 'destroy'])
@pytest.mark.parametrize('index', [0, 3])
def test_unknown_volume_type_names_the_entry(method, index):
    bdi = copy.deepcopy(full_spawn()['block_device_info'])
    bdi['block_device_mapping'][index]['connection_info']['driver_volume_type'] = 'fc'
    args = minimal(method)
    args['block_device_info'] = bdi
    error = invalid(method, args)
    assert error.field == VTYPE % index
    assert error.reason == 'unknown volume driver type (installed: iscsi, local, nbd, nfs, rbd)'
    assert error.uuid == UUID


# other methods: (method, args, field, reason or None)
OTHER_BAD = [
    ('rescue', {'instance': instance(), 'rescue_image_meta': 'x'}, 'rescue_image_meta',
     'must be an object or null'),
    ('rescue', {'instance': instance(), 'rescue_image_meta': {}},
     'rescue_image_meta.id', 'is required'),
    ('rescue', {'instance': instance(), 'rescue_image_meta': {'id': '..'}},
     'rescue_image_meta.id', IMAGE_REASON),
    ('rescue', {'instance': instance(), 'rescue_password': 5}, 'rescue_password', None),
    ('rescue', {'instance': instance(), 'rescue_password': 'p' * 256}, 'rescue_password',
     None),
    ('reboot', {'instance': instance(), 'reboot_type': 'soft'}, 'reboot_type',
     'must be one of: SOFT, HARD'),
    ('reboot', {'instance': instance(), 'reboot_type': 'COLD'}, 'reboot_type', None),
    ('reboot', {'instance': instance(), 'reboot_type': None}, 'reboot_type', None),
    ('reboot', {'instance': instance(), 'reboot_type': 5}, 'reboot_type',
     'must be one of: SOFT, HARD'),
    ('power_off', {'instance': instance(), 'timeout': -1}, 'timeout',
     'must be an integer between 0 and 86400'),
    ('power_off', {'instance': instance(), 'timeout': '60'}, 'timeout', None),
    ('power_off', {'instance': instance(), 'timeout': 1.5}, 'timeout', None),
    ('power_off', {'instance': instance(), 'timeout': 86401}, 'timeout', None),
    ('power_off', {'instance': instance(), 'timeout': None}, 'timeout', None),
    ('destroy', {'instance': instance(), 'cleanup': 'yes'}, 'cleanup', 'must be a boolean'),
    ('destroy', {'instance': instance(), 'cleanup': 1}, 'cleanup', 'must be a boolean'),
    ('destroy', {'instance': instance(), 'network_info': [{}]}, 'network_info[0].id',
     'is required'),
    ('destroy', {'instance': instance(), 'block_device_info': {'swap': {}}},
     'block_device_info.swap.device_name', 'is required'),
    ('get_console_output', {'instance_uuid': UUID, 'tail_lines': 0}, 'tail_lines',
     'must be an integer between 1 and 10000'),
    ('get_console_output', {'instance_uuid': UUID, 'tail_lines': 10001}, 'tail_lines',
     None),
    ('get_console_output', {'instance_uuid': UUID, 'tail_lines': '100'}, 'tail_lines',
     None),
]
# -- resize: the flavor is checked as the instance's (docs: protocol-method-resize)
_FLAVOR = {'memory_mb': 256, 'vcpus': 2, 'root_gb': 2}
OTHER_BAD += [
    ('resize', {'instance_uuid': UUID}, 'flavor', 'is required'),
    ('resize', {'instance_uuid': UUID, 'flavor': None}, 'flavor', 'must be an object'),
    ('resize', {'instance_uuid': UUID, 'flavor': {'vcpus': 2, 'root_gb': 2}},
     'flavor.memory_mb', 'is required'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, memory_mb=0)},
     'flavor.memory_mb', 'must be an integer > 0'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, vcpus=0)},
     'flavor.vcpus', 'must be an integer > 0'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, vcpus=1.0)},
     'flavor.vcpus', 'must be an integer > 0'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, root_gb=-1)},
     'flavor.root_gb', 'must be an integer >= 0'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, ephemeral_gb='1')},
     'flavor.ephemeral_gb', 'must be an integer >= 0'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, swap=True)},
     'flavor.swap', 'must be an integer >= 0'),
    ('resize', {'instance_uuid': UUID, 'flavor': dict(_FLAVOR, memory_mb=2 ** 31)},
     'flavor.memory_mb', 'must be at most 2147483647'),
    ('resize', {'instance_uuid': 'x', 'flavor': _FLAVOR}, 'instance_uuid',
     'must be a UUID string (8-4-4-4-12 hex digits)'),
    ('resize', {'instance_uuid': UUID, 'flavor': _FLAVOR, 'instance': instance()},
     'instance', 'unexpected argument'),
    ('confirm_resize', {}, 'instance_uuid', 'is required'),
    ('confirm_resize', {'instance_uuid': UUID, 'flavor': _FLAVOR}, 'flavor',
     'unexpected argument'),
    ('revert_resize', {'instance_uuid': 5}, 'instance_uuid',
     'must be a UUID string (8-4-4-4-12 hex digits)'),
]
# -- end of resize
for _method in ('get_info', 'get_console_output', 'get_vnc_console'):
    for _value in ['x', 5, None, UUID + '\n', UUID.replace('-', '')]:
        OTHER_BAD.append((_method, {'instance_uuid': _value}, 'instance_uuid',
                          'must be a UUID string (8-4-4-4-12 hex digits)'))
# snapshot (1.1): the image id rule, the two formats, quiesce a bool or null
OTHER_BAD += [
    ('snapshot', {'instance_uuid': UUID, 'image_id': bad}, 'image_id', None)
    for bad in ('../x', '.hidden', 'a/b', '', 'x' * 129, 'snap\n', 5, None)]
OTHER_BAD += [
    ('snapshot', dict(minimal('snapshot'), disk_format='iso'), 'disk_format', None),
    ('snapshot', dict(minimal('snapshot'), quiesce='yes'), 'quiesce', None),
]
for _method in sorted(PROTOCOL_METHODS):
    if 'instance' in minimal(_method):
        OTHER_BAD.append((_method, {'instance': instance(name='../x')}, 'instance.name',
                          NAME_REASON))
        OTHER_BAD.append((_method, {'instance': instance(flavor={})},
                          'instance.flavor.memory_mb', 'is required'))
        OTHER_BAD.append((_method, {'instance': []}, 'instance', 'must be an object'))


@pytest.mark.parametrize('method, args, field, reason', OTHER_BAD,
                         ids=['%s-%s' % (c[0], c[2]) for c in OTHER_BAD])
def test_other_method_bad_field(method, args, field, reason):
    error = invalid(method, args)
    assert error.field == field
    if reason is not None:
        assert error.reason == reason


@pytest.mark.parametrize('method, args', [
    ('rescue', {'instance': instance(), 'rescue_image_meta': {'id': 'rescue-img'},
                'rescue_password': 'pw'}),
    ('rescue', {'instance': instance(), 'rescue_image_meta': None, 'rescue_password': None}),
    ('reboot', {'instance': instance(), 'reboot_type': 'HARD'}),
    ('power_off', {'instance': instance(), 'timeout': 0}),
    ('power_off', {'instance': instance(), 'timeout': 86400}),
    ('destroy', {'instance': instance(), 'cleanup': False,
                 'network_info': full_spawn()['network_info'],
                 'block_device_info': full_spawn()['block_device_info']}),
    ('get_console_output', {'instance_uuid': UUID, 'tail_lines': 1}),
    ('get_console_output', {'instance_uuid': UUID, 'tail_lines': 10000}),
])
def test_other_method_good(method, args):
    result = validation.validate(method, args)
    if 'instance' in args:
        assert result['instance'] == NORMALIZED_INSTANCE
    for key, value in args.items():
        if key != 'instance' and not isinstance(value, dict):
            assert result[key] == value


def test_resize_flavor_keeps_unknown_keys_and_its_values():
    """The flavor is the instance object's (unknown keys ignored, kept)."""
    flavor = {'memory_mb': 512, 'vcpus': 4, 'root_gb': 10, 'ephemeral_gb': 5,
              'swap': 256, 'name': 'm1.medium'}
    result = validation.validate('resize', {'instance_uuid': UUID.upper(),
                                            'flavor': flavor})
    assert result == {'instance_uuid': UUID, 'flavor': flavor}


def test_rescue_image_meta_gets_image_defaults():
    result = validation.validate('rescue', {'instance': instance(),
                                            'rescue_image_meta': {'id': 'r'}})
    assert result['rescue_image_meta'] == {'id': 'r', 'disk_format': None,
                                           'checksum': None, 'size': None,
                                           'location': None, 'properties': {}}


# -- error details ----------------------------------------------------------

def test_uuid_reported_even_when_other_fields_are_bad():
    args = full_spawn()
    args['instance']['uuid'] = UUID.upper()
    args['instance']['name'] = '..'
    del args['image_meta']
    assert invalid('spawn', args).uuid == UUID
    assert invalid('get_console_output',
                   {'instance_uuid': UUID.upper(), 'tail_lines': -1}).uuid == UUID


def test_no_uuid_when_uuid_is_bad():
    assert invalid('spawn', with_value(full_spawn(), INST + ('uuid',), 'x')).uuid is None
    assert invalid('get_info', {'instance_uuid': 'x'}).uuid is None
    assert invalid('spawn', {'image_meta': {'id': 'x'}}).uuid is None


@pytest.mark.parametrize('method, args, expected', [
    ('spawn', {'instance': {'uuid': UUID.upper()}}, UUID),
    ('spawn', {'instance': {'uuid': 'nope'}}, None),
    ('spawn', {'instance': 'x'}, None),
    ('spawn', {'instance_uuid': UUID}, None),
    ('spawn', 'x', None),
    ('spawn', None, None),
    ('get_info', {'instance_uuid': UUID}, UUID),
    ('get_info', {'instance': {'uuid': UUID}}, None),
    ('get_vnc_console', {'instance_uuid': [UUID]}, None),
    ('bogus', {'instance': {'uuid': UUID}}, UUID),
    ('bogus', {'instance_uuid': UUID}, UUID),
    (None, {'instance_uuid': UUID}, UUID),
    ('ping', {}, None),
])
def test_instance_uuid_of(method, args, expected):
    assert validation.instance_uuid_of(method, args) == expected


def test_error_is_deterministic_and_most_specific():
    args = full_spawn()
    args['instance']['flavor']['vcpus'] = 0
    args['network_info'][0]['network']['subnets'][0]['ips'][0]['address'] = 'x'
    args['frobnicate'] = 1
    first = invalid('spawn', args)
    assert first.field == 'network_info[0].network.subnets[0].ips[0].address'
    reordered = dict(reversed(list(args.items())))
    for _ in range(3):
        again = invalid('spawn', reordered)
        assert (again.field, again.reason) == (first.field, first.reason)


def test_siblings_are_reported_in_name_order():
    flavor = {'memory_mb': 0, 'vcpus': 0, 'root_gb': 0}
    error = invalid('spawn', with_value(full_spawn(), INST + ('flavor',), flavor))
    assert error.field == 'instance.flavor.memory_mb'
    flavor = {'vcpus': 0, 'memory_mb': 0, 'root_gb': 0}
    error = invalid('spawn', with_value(full_spawn(), INST + ('flavor',), flavor))
    assert error.field == 'instance.flavor.memory_mb'


def test_wrong_type_beats_range_on_same_level():
    flavor = {'memory_mb': 0, 'vcpus': 'x', 'root_gb': 0}
    error = invalid('spawn', with_value(full_spawn(), INST + ('flavor',), flavor))
    assert (error.field, error.reason) == ('instance.flavor.vcpus', INT_GT0)


def test_first_of_several_unexpected_arguments_by_name():
    error = invalid('ping', {'zeta': 1, 'alpha': 2})
    assert error.field == 'alpha'


def test_long_unexpected_argument_name_is_shortened():
    error = invalid('ping', {'x' * 1000: 1})
    assert error.field == 'x' * 64 + '...'
    assert len(error.message) < 200


def test_reasons_never_echo_values():
    marker = 'MARKER' + 'q' * 300
    for path in [INST + ('name',), INST + ('hostname',), ('image_meta', 'id'), VIF + ('address',),
                 INST + ('user_data',), vol(0) + ('device_path',), ('injected_files',)]:
        error = invalid('spawn', with_value(full_spawn(), path, marker))
        assert 'MARKER' not in error.message


@pytest.mark.parametrize('field', ['admin_password', 'auth_password', 'rescue_password'])
def test_secret_fields_are_listed(field):
    assert field in validation.SECRET_FIELDS


# -- properties -------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20)


def _check_outcome(method, args):
    try:
        result = validation.validate(method, args)
    except exception.InvalidRequest as e:
        assert isinstance(e.field, str) and e.field
        assert isinstance(e.reason, str) and e.reason
        assert e.uuid is None or e.uuid == e.uuid.lower()
        json.dumps(e.to_dict())
        return None
    assert isinstance(result, dict)
    assert validation.validate(method, result) == result
    return result


@given(method=st.sampled_from(sorted(PROTOCOL_METHODS) + ['bogus']), args=JSON)
def test_arbitrary_args_only_raise_invalid_request(method, args):
    _check_outcome(method, args)


@given(method=st.sampled_from(sorted(PROTOCOL_METHODS)),
       args=st.dictionaries(
           st.sampled_from(['instance', 'image_meta', 'network_info', 'block_device_info',
                            'admin_password', 'injected_files', 'reboot_type', 'timeout',
                            'cleanup', 'instance_uuid', 'tail_lines', 'rescue_image_meta',
                            'rescue_password']),
           JSON, max_size=6))
def test_arbitrary_values_of_known_args_only_raise_invalid_request(method, args):
    _check_outcome(method, args)


def _leaf_paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaf_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaf_paths(item, prefix + (index,))


SPAWN_PATHS = [p for p in _leaf_paths(full_spawn()) if p]


@given(path=st.sampled_from(SPAWN_PATHS), value=JSON | st.just(DELETE))
def test_mutated_spawn_only_raises_invalid_request(path, value):
    _check_outcome('spawn', with_value(full_spawn(), path, value))


NAME_CHARS = st.sampled_from(list('aZ09._-/\\ \n\x00:%$\u00e9\u0660'))


@given(name=st.text() | st.text(NAME_CHARS, max_size=70)
       | st.text(st.sampled_from('ab._-'), min_size=60, max_size=66))
def test_accepted_instance_names_are_safe_path_components(name):
    try:
        result = validation.validate('spawn', dict(minimal('spawn'),
                                                   instance=instance(name=name)))
    except exception.InvalidRequest as e:
        assert e.field == 'instance.name'
        return
    accepted = result['instance']['name']
    assert accepted == name
    assert 0 < len(accepted) <= 63
    assert '/' not in accepted and '\x00' not in accepted
    assert accepted not in ('.', '..') and not accepted.startswith('.')
    assert accepted.isascii() and accepted.isprintable() and accepted.strip() == accepted


SECRET = st.text(min_size=1, max_size=30).map(lambda s: 'pw-SECRET-' + s)


def _bad_password(secret, kind):
    return {'type-list': [secret], 'type-dict': {secret: secret}, 'too-long': secret * 30,
            'nested': [[secret, {'x': secret}]]}[kind]


@given(secret=SECRET,
       kind=st.sampled_from(['type-list', 'type-dict', 'too-long', 'nested']),
       other=st.sampled_from([None, INST + ('name',), INST + ('uuid',), ('image_meta',),
                              VIF + ('address',)]))
def test_bad_passwords_never_appear_in_errors(secret, kind, other):
    bad = _bad_password(secret, kind)
    if kind == 'too-long':
        assume(len(bad) > 255)
    args = full_spawn()
    args['admin_password'] = bad
    if other is not None:
        args = with_value(args, other, secret)
    _assert_secret_hidden(invalid('spawn', args), secret)
    rescue = {'instance': args['instance'], 'rescue_password': bad}
    _assert_secret_hidden(invalid('rescue', rescue), secret)


@given(secret=SECRET, other=st.sampled_from([INST + ('name',), INST + ('flavor', 'vcpus'),
                                             ('image_meta', 'id'), VIF + ('devname',)]))
def test_good_passwords_never_appear_when_other_fields_fail(secret, other):
    assume(len(secret) <= 255)
    args = with_value(full_spawn(), other, secret + '/')
    args['admin_password'] = secret
    _assert_secret_hidden(invalid('spawn', args), secret)
    chap = with_value(args, vol(1) + ('auth_password',), [secret])
    _assert_secret_hidden(invalid('spawn', chap), secret)


def _assert_secret_hidden(error, secret):
    for text in (error.message, str(error), repr(error), error.field, error.reason,
                 repr(error.kwargs), json.dumps(error.to_dict())):
        assert secret not in text
        assert 'SECRET' not in text


# -- rebuild (docs: protocol-method-rebuild) --------------------------------

@pytest.mark.parametrize('path,value,field,reason', [
    (('preserve_ephemeral',), 'yes', 'preserve_ephemeral', 'must be a boolean'),
    (('preserve_ephemeral',), 1, 'preserve_ephemeral', 'must be a boolean'),
    (('image_meta',), None, 'image_meta', 'must be an object'),
    (('image_meta', 'id'), DELETE, 'image_meta.id', 'is required'),
    (('image_meta', 'id'), '../etc/passwd', 'image_meta.id', None),
    (('image_meta', 'disk_format'), 'vmdk', 'image_meta.disk_format', None),
    (('image_meta', 'checksum'), 'sha256:xyz', 'image_meta.checksum', None),
    (('image_meta', 'location'), 'not a url', 'image_meta.location', None),
    (('instance_uuid',), 'not-a-uuid', 'instance_uuid', None),
])
def test_rebuild_bad_input_names_the_field(path, value, field, reason):
    error = invalid('rebuild', with_value(minimal('rebuild'), path, value))
    assert error.field == field
    if reason is not None:
        assert error.reason == reason


def test_rebuild_keeps_its_values_and_names_its_instance():
    args = dict(minimal('rebuild'), admin_password='pw', preserve_ephemeral=True,
                image_meta={'id': 'img-2', 'disk_format': 'raw',
                            'checksum': 'sha256:' + 'a' * 64})
    result = validation.validate('rebuild', args)
    assert (result['admin_password'], result['preserve_ephemeral']) == ('pw', True)
    assert result['image_meta']['checksum'] == 'sha256:' + 'a' * 64
    assert validation.instance_uuid_of('rebuild', args) == UUID


@given(secret=SECRET, kind=st.sampled_from(['type-list', 'type-dict', 'too-long', 'nested']))
def test_rebuild_passwords_never_appear_in_errors(secret, kind):
    bad = _bad_password(secret, kind)
    if kind == 'too-long':
        assume(len(bad) > 255)
    _assert_secret_hidden(invalid('rebuild', dict(minimal('rebuild'), admin_password=bad)),
                          secret)
    # A good password beside a bad field never shows either.
    assume(len(secret) <= 255)
    _assert_secret_hidden(invalid('rebuild', dict(
        minimal('rebuild'), admin_password=secret, preserve_ephemeral=secret)), secret)
# -- set_admin_password (issue 15) ------------------------------------------------------

@pytest.mark.parametrize('args, field', [
    ({'admin_password': ''}, 'admin_password'),
    ({'admin_password': 'a\nroot:x'}, 'admin_password'),
    ({'admin_password': 'tab\there'}, 'admin_password'),
    ({'admin_password': 'x' * 256}, 'admin_password'),
    ({'admin_password': None}, 'admin_password'),
    ({'admin_password': 'ok', 'user': 'ro:ot'}, 'user'),
    ({'admin_password': 'ok', 'user': '../etc'}, 'user'),
    ({'admin_password': 'ok', 'user': 'a b'}, 'user'),
    ({'admin_password': 'ok', 'user': ''}, 'user'),
    ({'admin_password': 'ok', 'user': 'x' * 33}, 'user'),
])
def test_set_admin_password_bad_input(args, field):
    secret = args['admin_password']
    error = invalid('set_admin_password', dict(args, instance_uuid=UUID))
    assert error.field == field
    if isinstance(secret, str) and len(secret) > 3:
        assert secret not in str(error)     # the reason never repeats it


def test_set_admin_password_user_defaults_to_root():
    args = validation.validate('set_admin_password', {
        'instance_uuid': UUID, 'admin_password': 'p:ss w0rd'})
    assert args['user'] == 'root'
    assert args['admin_password'] == 'p:ss w0rd'
