"""compute_agent.validation: the method table, a full spawn, and spawn's fields one by one."""

import copy

import jsonschema
import pytest

from compute_agent import validation

try:
    from tests.unit.validation_cases import (
        BDI, BDM, DELETE, IMAGE_REASON, INST, INT_GE0, INT_GT0, NAME_REASON,
        NORMALIZED_INSTANCE, PORT_ID, PROTOCOL_METHODS, UUID, UUID2, VIF, b64,
        full_spawn, invalid, minimal, vol, with_value)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from validation_cases import (
        BDI, BDM, DELETE, IMAGE_REASON, INST, INT_GE0, INT_GT0, NAME_REASON,
        NORMALIZED_INSTANCE, PORT_ID, PROTOCOL_METHODS, UUID, UUID2, VIF, b64,
        full_spawn, invalid, minimal, vol, with_value)


# -- the method table -------------------------------------------------------

def test_methods_are_those_of_the_protocol():
    assert set(validation.METHODS) == PROTOCOL_METHODS
    assert len(validation.METHODS) == len(PROTOCOL_METHODS)


@pytest.mark.parametrize('method', sorted(PROTOCOL_METHODS))
def test_schemas_are_valid_draft_2020_12(method):
    jsonschema.Draft202012Validator.check_schema(validation.SCHEMAS[method])
    assert validation.SCHEMAS[method]['$schema'].endswith('/draft/2020-12/schema')


EXPECTED_MINIMAL = {
    # A spawn's root disk image defaults to image_meta.id.
    'spawn': {'instance': dict(NORMALIZED_INSTANCE, image_ref='cirros'),
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


@pytest.mark.parametrize('image_ref', [None, DELETE])
def test_a_spawn_without_image_ref_boots_image_meta_id(image_ref):
    args = with_value(full_spawn(), INST + ('image_ref',), image_ref)
    result = validation.validate('spawn', args)
    assert result['instance']['image_ref'] == args['image_meta']['id']


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
