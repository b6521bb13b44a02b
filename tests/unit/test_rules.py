"""compute_agent.rules: each input rule, and every part that applies it.

The case tables are written out here (not derived from the rules): a rule
that changes by accident fails them. Then each rule's users - the request
schemas, the VIF drivers, the instance directory and the image cache - must
give the same verdict and the same reason for the same value.
"""

import copy
import types

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent import rules
from compute_agent import validation
from compute_agent.images import cache as image_cache
from compute_agent.vif import loader
from compute_agent.virt import blockinfo
from compute_agent.virt import disks

UUID = '6f2d8f55-1c4b-4d0e-9a53-7b0c2b2a9e01'
PORT = 'b7e4c6a0-12ab-4cde-8f01-23456789abcd'

# rule -> (values it accepts, values it refuses)
CASES = {
    'INSTANCE_NAME': (
        ['a', '0', 'vm-1', 'A.b_c-9', 'instance-00000001', 'a' * 63],
        ['', '.', '..', '../x', 'a/b', '.hidden', '-x', '_x', 'a' * 64, 'vm\n', 'vm\x00',
         'vm 1', 'vm\u00e9', 'vm:1', 'vm~1', '\u0660', 'x\n\n'],
    ),
    'IMAGE_ID': (
        ['a', '0', 'a' * 128, UUID, 'cirros-0.6', 'img.qcow2', 'a_b', 'rc~1', 'A~.-_z'],
        ['', '.', '..', '../x', 'a/b', '.x', '-x', '_x', '~x', 'a' * 129, 'img\n', 'img 1',
         'a:b', 'a%2Fb', 'a?b', 'caf\u00e9', 'a\x00b', 'http://x/y'],
    ),
    'CHECKSUM': (
        ['d41d8cd98f00b204e9800998ecf8427e', 'sha256:' + 'a' * 64],
        ['', 'abc', 'D41D8CD98F00B204E9800998ECF8427E', 'sha256:' + 'a' * 63,
         'sha256:' + 'A' * 64, 'md5:d41d8cd98f00b204e9800998ecf8427e',
         'd41d8cd98f00b204e9800998ecf8427e\n', 'sha1:' + 'a' * 40, 'sha256:xyz'],
    ),
    'UUID': (
        [UUID, UUID.upper(), '00000000-0000-0000-0000-000000000000'],
        ['', 'x', UUID + '\n', UUID[:-1], UUID + 'a', UUID.replace('-', ''),
         '{%s}' % UUID, 'urn:uuid:' + UUID, UUID[:-1] + 'g', ' ' + UUID],
    ),
    'MAC': (
        ['fa:16:3e:12:34:56', 'FA:16:3E:AB:CD:EF', '02:00:00:00:00:01', '00:00:00:00:00:01'],
        ['fa:16:3e:12:34', 'zz:16:3e:12:34:56', 'fa-16-3e-12-34-56', 'fa16.3e12.3456',
         'fa:16:3e:12:34:56\n', 'fa:16:3e:12:34:56:78', '', '01:00:5e:00:00:01',
         'ff:ff:ff:ff:ff:ff', '33:33:00:00:00:01', '00:00:00:00:00:00'],
    ),
    'VIF_ID': (
        ['port-1', PORT, 'a', 'a' * 255, 'A.b_c-9'],
        ['', '../x', 'a/b', 'a b', '.x', '-x', 'a' * 256, 'x\n'],
    ),
    'IFNAME': (
        ['tap0', 'br100', 'br-int', 'b' * 14, 'tapb7e4c6a0-99', 'eth0.100', 'a_b'],
        ['', '0tap', '-br', '_br', '.br', 'b' * 15, 'br 0', 'br/0', '../br', 'tap:1', 'tap\n',
         'tap\u00e9'],
    ),
    'PLUGIN_NAME': (
        ['bridge', 'ovs', 'local', 'my_plugin2', 'a', 'a' * 32],
        ['', 'Bridge', 'a-b', '1ovs', '_x', 'a' * 33, 'ovs\n', 'a.b', 'a b'],
    ),
    'DISK_NAME': (
        ['vda', 'vdz', 'xvdb', 'sdc', 'hdd', 'ubda'],
        ['', 'vd', 'vdaa', 'vda1', 'VDA', 'nvme0n1', '/dev/vda', 'vd1', 'xda', 'vda\n'],
    ),
    'DEVICE_PATH': (
        ['/dev/vda', '/dev/xvdb', '/dev/sdc', '/dev/hdd', '/dev/ubda'],
        ['', 'vda', '/dev/vda1', '/dev/VDA', '/dev/nvme0n1', '/dev/vd', '/dev/vdaa',
         '/dev/vda/', '/dev/vda\n', '/dev//vda', '/dev/../etc/passwd'],
    ),
    'VOLUME_ID': (
        ['vol-1', UUID, 'a' * 255, 'volume.1_a'],
        ['', '../v', 'a/b', '.v', 'a' * 256, 'v\n', 'v 1'],
    ),
}
NOT_STRINGS = [None, 5, 1.5, True, ['a'], {'a': 1}, b'a']


def _cases(good):
    return [(name, value) for name, (ok, bad) in sorted(CASES.items())
            for value in (ok if good else bad)]


@pytest.mark.parametrize('name, value', _cases(True))
def test_rule_accepts(name, value):
    rule = getattr(rules, name)
    assert rule.check(value) is None
    assert rule.ok(value)
    assert rule.require(value, 'some.field') is value


@pytest.mark.parametrize('name, value', _cases(False))
def test_rule_refuses_naming_field_not_value(name, value):
    rule = getattr(rules, name)
    reason = rule.check(value)
    assert reason and not rule.ok(value)
    with pytest.raises(exception.InvalidRequest) as err:
        rule.require(value, 'some.field')
    assert (err.value.field, err.value.reason) == ('some.field', reason)
    if len(value) > 2:
        assert value not in err.value.message


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('value', NOT_STRINGS, ids=repr)
def test_rule_refuses_non_strings(name, value):
    assert getattr(rules, name).check(value) == 'must be a string'


@pytest.mark.parametrize('value, reason', [
    (None, None), (68, None), (1500, None), (65535, None),
    (67, 'must be between 68 and 65535'), (65536, 'must be between 68 and 65535'),
    (0, 'must be between 68 and 65535'), (-1, 'must be between 68 and 65535'),
    ('1500', 'must be an integer or null'), (1500.0, 'must be an integer or null'),
    (True, 'must be an integer or null'),
])
def test_mtu(value, reason):
    assert rules.check_mtu(value) == reason


@pytest.mark.parametrize('value, expected', [
    ('/dev/vdb', 'vdb'), ('vdb', 'vdb'), (None, None), ('', ''), ('/dev/', ''),
])
def test_strip_dev(value, expected):
    assert rules.strip_dev(value) == expected


def test_disk_buses_cover_the_device_rule():
    assert set(rules.DISK_BUSES) == set(rules.DISK_PREFIXES)
    assert blockinfo.BUS_BY_PREFIX is rules.DISK_BUSES
    for prefix in rules.DISK_PREFIXES:
        assert rules.DISK_NAME.ok(prefix + 'a')
        assert rules.DEVICE_PATH.ok('/dev/%sa' % prefix)


def test_ecma_dollar():
    """``$`` is the very end, as JSON Schema says (not before a final newline)."""
    assert rules.compile_pattern('^a$').search('a')
    assert not rules.compile_pattern('^a$').search('a\n')
    assert rules.compile_pattern(r'^a\$$').search('a$')


# -- every user of a rule agrees with it -----------------------------------------------

def _spawn():
    return {
        'instance': {'uuid': UUID, 'name': 'vm-1', 'image_ref': 'cirros',
                     'flavor': {'memory_mb': 512, 'vcpus': 1, 'root_gb': 1}},
        'image_meta': {'id': 'cirros'},
        'network_info': [{'id': PORT, 'address': 'fa:16:3e:12:34:56', 'type': 'bridge',
                          'devname': 'tapb7e4c6a0-12',
                          'network': {'bridge': 'br100', 'mtu': 1500}}],
        'block_device_info': {'block_device_mapping': [{
            'mount_device': '/dev/vdb', 'volume_id': 'vol-1',
            'connection_info': {'driver_volume_type': 'local',
                                'data': {'device_path': '/var/lib/v1'}}}]},
    }


def _schema_verdict(path, value, also=()):
    """(field, reason) validation gives for ``value`` at ``path``, or None."""
    args = copy.deepcopy(_spawn())
    for p in (path,) + tuple(also):
        target = args
        for key in p[:-1]:
            target = target[key]
        target[p[-1]] = value
    try:
        validation.validate('spawn', args)
    except exception.InvalidRequest as e:
        return e.field, e.reason
    return None


# (rule, request paths it governs; a second path is set to the same value)
SCHEMA_USES = [
    ('INSTANCE_NAME', ('instance', 'name'), ()),
    ('IMAGE_ID', ('instance', 'kernel_id'), ()),
    ('IMAGE_ID', ('instance', 'ramdisk_id'), ()),
    ('IMAGE_ID', ('image_meta', 'id'), (('instance', 'image_ref'),)),
    ('UUID', ('instance', 'uuid'), ()),
    ('CHECKSUM', ('image_meta', 'checksum'), ()),
    ('MAC', ('network_info', 0, 'address'), ()),
    ('VIF_ID', ('network_info', 0, 'id'), ()),
    ('IFNAME', ('network_info', 0, 'network', 'bridge'), ()),
    ('IFNAME', ('network_info', 0, 'devname'), ()),
    ('PLUGIN_NAME', ('network_info', 0, 'type'), ()),
    ('DEVICE_PATH', ('block_device_info', 'block_device_mapping', 0, 'mount_device'), ()),
    ('VOLUME_ID', ('block_device_info', 'block_device_mapping', 0, 'volume_id'), ()),
]


def _field(path):
    return validation.field_path(list(path))


@pytest.mark.parametrize('name, path, also', SCHEMA_USES,
                         ids=['%s-%s' % (u[0], _field(u[1])) for u in SCHEMA_USES])
def test_schema_applies_the_rule(name, path, also):
    rule = getattr(rules, name)
    good, bad = CASES[name]
    for value in bad:
        verdict = _schema_verdict(path, value, also)
        if name == 'UUID':
            assert verdict == (_field(path), 'must be a UUID string (8-4-4-4-12 hex digits)')
        else:
            assert verdict == (_field(path), rule.check(value)), value
    for value in good:
        verdict = _schema_verdict(path, value, also)
        # a few good values break another rule (a 'vda' bridge is fine, a
        # devname must still start with tap for the driver, not the schema)
        assert verdict is None or verdict[0] != _field(path), (value, verdict)


def _conf(tmp_path):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='compute-agent', default_config_files=[])
    conf.set_override('instances_path', str(tmp_path / 'instances'))
    return conf


@pytest.mark.parametrize('good', [True, False], ids=['good', 'bad'])
def test_instance_dir_applies_the_name_rule(tmp_path, good):
    conf = _conf(tmp_path)
    for value in CASES['INSTANCE_NAME'][0 if good else 1] + ([] if good else NOT_STRINGS):
        if good:
            assert disks.instance_dir(conf, value).endswith('/' + value)
        else:
            with pytest.raises(exception.InvalidRequest) as err:
                disks.instance_dir(conf, value)
            assert (err.value.field, err.value.reason) == (
                'instance.name', rules.INSTANCE_NAME.check(value))


@pytest.mark.parametrize('good', [True, False], ids=['good', 'bad'])
def test_image_cache_applies_the_image_id_rule(tmp_path, good):
    cache = image_cache.ImageCache(types.SimpleNamespace(
        instances_path=str(tmp_path / 'instances')))
    for value in CASES['IMAGE_ID'][0 if good else 1] + ([] if good else NOT_STRINGS):
        if good:
            assert cache.path_for(value).startswith(cache.base_dir + '/')
        else:
            with pytest.raises(exception.InvalidRequest) as err:
                cache.path_for(value)
            assert (err.value.field, err.value.reason) == (
                'image_meta.id', rules.IMAGE_ID.check(value))


def _set_bridge(vif, value):
    vif['network']['bridge'] = value


def _set_devname(vif, value):
    vif['devname'] = value
    vif['details'] = {'devname_prefix': value[:1] if isinstance(value, str) and value
                      else 't'}


# (VIF type, rule, VIF field the driver checks, how to put a value there)
DRIVER_USES = [(vif_type, 'MAC', 'address', lambda vif, v: vif.__setitem__('address', v))
               for vif_type in ('bridge', 'ovs', 'ethernet')]
DRIVER_USES += [(vif_type, 'VIF_ID', 'id', lambda vif, v: vif.__setitem__('id', v))
                for vif_type in ('bridge', 'ovs', 'ethernet')]
DRIVER_USES += [('bridge', 'IFNAME', 'network.bridge', _set_bridge)]


@pytest.mark.parametrize('vif_type, name, field, setter', DRIVER_USES,
                         ids=['%s-%s' % u[:2] for u in DRIVER_USES])
def test_vif_drivers_apply_the_rule(tmp_path, vif_type, name, field, setter):
    conf = _conf(tmp_path)
    drv = loader.VifDrivers(conf).get(vif_type)
    rule = getattr(rules, name)
    good, bad = CASES[name]
    for value in good + bad + NOT_STRINGS:
        vif = copy.deepcopy(_spawn()['network_info'][0])
        vif['type'] = vif_type
        setter(vif, value)
        reason = rule.check(value)
        if vif_type == 'ovs' and name == 'VIF_ID' and reason is None:
            reason = None if rules.UUID.ok(value) else 'must be a UUID'
        try:
            drv.validate(vif)
        except exception.VifPlugFailed as e:
            assert reason is not None, (value, e.message)
            assert e.kwargs['reason'].startswith('%s %s' % (field, reason)), e.message
        else:
            assert reason is None, value


def test_devname_rule_in_the_drivers(tmp_path):
    drv = loader.VifDrivers(_conf(tmp_path)).get('ethernet')
    for value in CASES['IFNAME'][0] + CASES['IFNAME'][1]:
        vif = copy.deepcopy(_spawn()['network_info'][0])
        _set_devname(vif, value)
        reason = rules.IFNAME.check(value)
        if not value or value.startswith(('vnet', 'vif')):
            continue    # no devname: the driver derives one; libvirt's own prefixes
        try:
            drv.validate(vif)
        except exception.VifPlugFailed as e:
            assert reason is not None, (value, e.message)
            # an empty or bad first character fails as the prefix
            assert e.kwargs['reason'] in ('devname ' + reason,
                                          'details.devname_prefix ' + reason), e.message
        else:
            assert reason is None, value
