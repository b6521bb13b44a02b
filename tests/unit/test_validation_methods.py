"""compute_agent.validation: the other methods' fields, and what an error names."""

import pytest

from compute_agent import validation

try:
    from tests.unit.validation_cases import (
        IMAGE_REASON, INST, INT_GT0, NAME_REASON, NORMALIZED_INSTANCE,
        PROTOCOL_METHODS, UUID, VIF, full_spawn, instance, invalid, minimal, vol,
        with_value)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from validation_cases import (
        IMAGE_REASON, INST, INT_GT0, NAME_REASON, NORMALIZED_INSTANCE,
        PROTOCOL_METHODS, UUID, VIF, full_spawn, instance, invalid, minimal, vol,
        with_value)


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
# detach_volume: a volume id, or the mount_device of one attached without
# an id (docs: protocol-volumes-1-1), nothing else
OTHER_BAD += [
    ('detach_volume', {'instance_uuid': UUID, 'volume_id': bad}, 'volume_id', None)
    for bad in ('/dev/../x', '/dev/vdc1', '/dev/', 'a/b', '../vol', '', 5, None)]
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
    ('detach_volume', {'instance_uuid': UUID, 'volume_id': 'vol-1'}),
    ('detach_volume', {'instance_uuid': UUID, 'volume_id': '/dev/vdc'}),
    ('detach_volume', {'instance_uuid': UUID, 'volume_id': 'vdc'}),
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
