"""compute_agent.validation: image ids and volume driver types."""

import copy

import pytest

from compute_agent import validation

try:
    from tests.unit.validation_cases import (
        DELETE, IMAGE_REASON, UUID, full_spawn, instance, invalid, minimal)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from validation_cases import (
        DELETE, IMAGE_REASON, UUID, full_spawn, instance, invalid, minimal)


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
