"""The guest XML model (compute_agent.virt.config over xmlbase).

1. Every declared property of every class in ``config.ALL_CLASSES``
   round-trips through format/parse, reads back what was set, and setting it
   to None/False/[] removes it without leaving empty parent elements.
2. Real libvirt XML (``virsh dumpxml``, i.e. ``XMLDesc()``) from libvirt's
   test driver and, when libvirtd runs, from qemu:///system survives
   parse -> edit -> format losslessly apart from the edit, and libvirt
   accepts the result again.
"""

import inspect
import subprocess
import uuid

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from lxml import etree

from compute_agent.virt import config
from compute_agent.virt import xmlbase
from compute_agent.virt.xmlbase import Child, Children, Flag, Int, OnOff, Prop, YesNo

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf

FAST = settings(max_examples=25, deadline=None)

# -- value strategies -----------------------------------------------------------

# XML 1.0 text: no control characters (tab/newline/CR included: attribute
# value normalisation would turn them into spaces), no surrogates and no
# U+FFFE/U+FFFF. Not empty or all-blank either: <kernel></kernel> is
# <kernel/>, so '' reads back as None; and xmlbase treats blank text as
# pretty-printing, so an element holding only blank text is pruned once its
# last attribute goes (CPU model=' ' is lost when model_fallback is removed).
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=('Cc', 'Cs'),
                           blacklist_characters='\ufffe\uffff'),
    min_size=1, max_size=16).filter(str.strip)
INTS = st.integers(min_value=-2 ** 63, max_value=2 ** 64)

PROPERTIES = [(cls, name) for cls in config.ALL_CLASSES
              for name in cls.properties()]


def scalar_strategy(prop):
    if isinstance(prop, Flag):
        return st.just(True)
    assert isinstance(prop, Prop), prop
    if prop.kind is Int:
        return INTS
    if prop.kind in (YesNo, OnOff):
        return st.booleans()
    assert prop.kind is xmlbase._Kind, 'a new kind %r: teach this test' % prop.kind
    return TEXT


def instance_strategy(cls):
    """An instance of ``cls`` with one (scalar) property set."""
    scalars = {name: prop for name, prop in cls.properties().items()
               if isinstance(prop, (Prop, Flag))}
    return st.sampled_from(sorted(scalars)).flatmap(
        lambda name: scalar_strategy(scalars[name]).map(
            lambda value: cls(**{name: value})))


def value_strategy(prop):
    if isinstance(prop, Child):
        return instance_strategy(prop.cls)
    if isinstance(prop, Children):
        return st.lists(instance_strategy(prop.cls), min_size=2, max_size=2)
    return scalar_strategy(prop)


def empty_value(prop):
    if isinstance(prop, Flag):
        return False
    if isinstance(prop, Children):
        return []
    return None


def snapshot(value):
    """An independent copy of a value (objects are views over live nodes)."""
    if isinstance(value, xmlbase.XMLObject):
        return type(value).parse(value.to_xml())
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    return value


def empty_canonical(cls):
    return cls().canonical()


def prop_id(param):
    if isinstance(param, tuple):
        return '%s.%s' % (param[0].__name__, param[1])
    return None


# -- the declarations themselves ----------------------------------------------------

def test_all_classes_lists_every_model_class():
    defined = {obj for _, obj in inspect.getmembers(config, inspect.isclass)
               if issubclass(obj, xmlbase.XMLObject) and obj.__module__ == config.__name__
               and obj.TAG is not None}
    assert defined == set(config.ALL_CLASSES)
    assert len(set(config.ALL_CLASSES)) == len(config.ALL_CLASSES)


@pytest.mark.parametrize('cls', config.ALL_CLASSES, ids=lambda c: c.__name__)
def test_class_declarations(cls):
    assert cls.TAG and cls.properties(), cls
    assert cls().to_xml(pretty=False) == '<%s/>' % cls.TAG
    assert cls.parse('<%s/>' % cls.TAG) == cls()
    with pytest.raises(ValueError):
        cls.parse('<not-%s/>' % cls.TAG)
    with pytest.raises(AttributeError):
        cls(no_such_property=1)
    for name, prop in cls.properties().items():
        assert isinstance(prop, (Prop, Flag, Child, Children)), name
        assert getattr(cls(), name) == empty_value(prop), name
        if isinstance(prop, (Child, Children)):
            assert prop.cls in config.ALL_CLASSES, (name, prop.cls)


# -- every property, one at a time --------------------------------------------------

@pytest.mark.parametrize('cls,name', PROPERTIES, ids=[prop_id(p) for p in PROPERTIES])
@FAST
@given(data=st.data())
def test_property_round_trips_and_removes(cls, name, data):
    prop = cls.properties()[name]
    value = data.draw(value_strategy(prop), label=name)
    expected = snapshot(value)

    obj = cls()
    setattr(obj, name, value)
    assert getattr(obj, name) == expected
    text = obj.to_xml()
    back = cls.parse(text)
    # (a) parse(format(x)) == x, also through the element API
    assert back == obj
    assert cls.parse(obj.format()) == obj
    # (b) the property reads back the same value ...
    assert getattr(back, name) == expected, text
    # ... and no other property picked anything up.
    for other, other_prop in cls.properties().items():
        if other != name:
            assert getattr(back, other) == empty_value(other_prop), (other, text)

    # Removing it leaves the bare element: no empty parents behind.
    for target in (obj, back):
        setattr(target, name, empty_value(prop))
        assert getattr(target, name) == empty_value(prop)
        assert target.canonical() == empty_canonical(cls), target.to_xml()
    # Removing what is not there is a no-op.
    setattr(back, name, empty_value(prop))
    assert back.canonical() == empty_canonical(cls)

    # Setting it twice keeps only the second value (no duplicate elements).
    first = expected
    second = data.draw(value_strategy(prop), label='second ' + name)
    expected = snapshot(second)
    setattr(obj, name, snapshot(first))
    setattr(obj, name, second)
    again = cls.parse(obj.to_xml())
    assert getattr(again, name) == expected
    fresh = cls()
    setattr(fresh, name, snapshot(expected))
    assert again == fresh


@pytest.mark.parametrize('cls,name', PROPERTIES, ids=[prop_id(p) for p in PROPERTIES])
def test_removing_an_absent_property_is_a_noop(cls, name):
    obj = cls()
    setattr(obj, name, empty_value(cls.properties()[name]))
    assert obj.to_xml(pretty=False) == '<%s/>' % cls.TAG


# -- every property at once ----------------------------------------------------------

@pytest.mark.parametrize('cls', config.ALL_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_all_properties_together(cls, data):
    props = cls.properties()
    values = {name: data.draw(value_strategy(prop), label=name)
              for name, prop in props.items()}
    expected = {name: snapshot(value) for name, value in values.items()}

    obj = cls(**values)
    back = cls.parse(obj.to_xml())
    assert back == obj
    for name in props:
        assert getattr(back, name) == expected[name], (name, back.to_xml())

    # Set again (replace), then remove one by one in a random order: the
    # others keep their values, and nothing empty is left behind at the end.
    order = data.draw(st.permutations(sorted(props)), label='removal order')
    for i, name in enumerate(order):
        setattr(back, name, empty_value(props[name]))
        assert getattr(back, name) == empty_value(props[name]), name
        again = cls.parse(back.to_xml())
        assert again == back
        for kept in order[i + 1:]:
            assert getattr(again, kept) == expected[kept], (name, kept, back.to_xml())
    assert back.canonical() == empty_canonical(cls), back.to_xml()


def test_removal_keeps_a_parent_that_still_holds_something():
    disk = config.Disk(driver_name='qemu', driver_type='raw', auth_username='u',
                       auth_secret_type='ceph', auth_secret_uuid='x')
    disk.driver_name = None
    assert disk.to_xml(pretty=False) == ('<disk><driver type="raw"/><source><auth '
                                         'username="u"><secret type="ceph" uuid="x"/>'
                                         '</auth></source></disk>')
    disk.auth_secret_type = None
    disk.auth_secret_uuid = None
    assert disk.to_xml(pretty=False) == ('<disk><driver type="raw"/><source><auth '
                                         'username="u"/></source></disk>')
    disk.auth_username = None
    disk.driver_type = None
    assert disk.to_xml(pretty=False) == '<disk/>'

    mem = config.Domain(memory_kib=1024, memory_unit='KiB')
    mem.memory_kib = None
    assert mem.to_xml(pretty=False) == '<domain><memory unit="KiB"/></domain>'

    entry = config.SysInfoEntry(name='serial', value='abc')
    entry.value = None
    assert entry.to_xml(pretty=False) == '<entry name="serial"/>'


def test_kinds_spell_libvirt_values():
    assert config.Timer(present=True).to_xml(pretty=False) == '<timer present="yes"/>'
    assert config.Timer(present=False).to_xml(pretty=False) == '<timer present="no"/>'
    assert config.Serial(log_append=True).to_xml(pretty=False) == \
        '<serial><log append="on"/></serial>'
    assert config.Serial.parse('<serial><log append="off"/></serial>').log_append is False
    assert config.Domain.parse('<domain><vcpu>4</vcpu></domain>').vcpus == 4
    assert config.Features(acpi=True).to_xml(pretty=False) == '<features><acpi/></features>'


def test_new_elements_follow_libvirt_order():
    dom = config.Domain()
    dom.on_crash = 'destroy'
    dom.vcpus = 1
    dom.os = config.OS(type='hvm')
    dom.name = 'n'
    dom.memory_kib = 1
    dom.uuid = 'u'
    assert [c.tag for c in dom.node] == ['name', 'uuid', 'memory', 'vcpu', 'os',
                                         'on_crash']
    disk = config.Disk(target_dev='vda', serial='s', source_file='/f', driver_name='qemu')
    assert [c.tag for c in disk.node] == ['driver', 'source', 'target', 'serial']


def test_unknown_elements_survive_an_edit():
    xml = ('<disk type="file" device="disk"><driver name="qemu" type="raw"/>'
           '<source file="/f"><seclabel model="dac" relabel="no"/></source>'
           '<target dev="vda" bus="virtio"/><iotune><total_bytes_sec>1'
           '</total_bytes_sec></iotune><address type="pci" slot="0x04"/></disk>')
    disk = config.Disk.parse(xml)
    disk.driver_cache = 'none'
    expected = etree.fromstring(xml)
    expected.find('driver').set('cache', 'none')
    assert disk.canonical() == xmlbase.canonical(expected)


def test_children_reject_the_wrong_class():
    with pytest.raises(TypeError):
        config.Domain().add('disks', config.Interface())


# -- real libvirt XML ---------------------------------------------------------------

def _canon(xml):
    node = etree.fromstring(xml) if isinstance(xml, str) else xml
    return xmlbase.canonical(node)


def _assert_lossless(xml):
    """parse -> format, untouched, is the same XML."""
    dom = config.Domain.parse(xml)
    assert _canon(dom.format()) == _canon(xml)
    assert _canon(dom.to_xml()) == _canon(xml)
    assert config.Domain.parse(dom.to_xml()) == dom
    return dom


@pytest.fixture
def libvirt_module():
    try:
        import libvirt
    except ImportError:
        bf.skip_or_fail('libvirt-python is not installed')
    return libvirt


def test_test_driver_default_domain(libvirt_module):
    libvirt = libvirt_module
    conn = bf.libvirt_test_conn()
    orig_dom = conn.lookupByName('test')
    xml = orig_dom.XMLDesc()
    inactive = orig_dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)

    dom = _assert_lossless(xml)
    assert dom.type == 'test'
    assert dom.name == 'test'
    assert dom.uuid == orig_dom.UUIDString()
    assert dom.memory_kib == 8388608 and dom.memory_unit == 'KiB'
    assert dom.vcpus == 2
    assert dom.os.type == 'hvm' and dom.os.arch == 'i686'
    assert [b.dev for b in dom.os.boot] == ['hd']
    assert dom.clock.offset == 'utc'
    assert (dom.on_poweroff, dom.on_reboot, dom.on_crash) == ('destroy', 'restart', 'destroy')
    [disk] = dom.disks
    assert (disk.type, disk.device) == ('file', 'disk')
    assert disk.source_file == '/guest/diskimage1'
    assert (disk.target_dev, disk.target_bus) == ('vda', 'virtio')
    assert disk.driver_cache is None
    [iface] = dom.interfaces
    assert iface.type == 'network' and iface.mac == 'aa:bb:cc:dd:ee:ff'
    assert iface.source_network == 'default' and iface.target_dev == 'testnet0'
    assert dom.memballoon.model == 'virtio'
    assert dom.graphics == [] and dom.serials == []

    # Edit: give the disk a cache mode (the disk has no <driver> yet).
    dom.disks[0].driver_cache = 'writeback'
    expected = etree.fromstring(xml)
    driver = etree.Element('driver', cache='writeback')
    expected.find('devices/disk').insert(0, driver)
    assert _canon(dom.format()) == _canon(expected)

    # libvirt takes it back, and its dumpxml is ours (less the live id).
    try:
        redefined = conn.defineXML(dom.to_xml())
        after = redefined.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        del expected.attrib['id']
        assert _canon(after) == _canon(expected)
        assert config.Domain.parse(after).disks[0].driver_cache == 'writeback'
    finally:
        conn.defineXML(inactive)
    assert _canon(conn.lookupByName('test').XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE)) == _canon(inactive)


def _full_request(prefix, **overrides):
    return bf.make_request(
        kernel_id=None, config_drive=True, network_info=bf.all_vifs(),
        flavor={'ephemeral_gb': 1, 'swap': 64},
        block_device_info=bf.bdi(ephemerals=[bf.ephemeral(1, prefix + 'd')],
                                 volumes=bf.all_volumes(prefix)),
        **overrides)


def _check_model_reads(dom, plan, request):
    inst = request['instance']
    assert dom.name == inst['name']
    assert dom.uuid == inst['uuid']
    assert dom.memory_kib == inst['flavor']['memory_mb'] * 1024
    assert dom.vcpus == inst['flavor']['vcpus']
    assert dom.type == plan.domain.type
    # libvirt lists disks sorted by target; compare them by target dev.
    got_disks = {d.target_dev: d for d in dom.disks}
    want_disks = {d.target_dev: d for d in plan.domain.disks}
    assert sorted(got_disks) == sorted(want_disks)
    assert len(dom.disks) == len(plan.domain.disks)
    for dev, want in want_disks.items():
        got = got_disks[dev]
        assert (got.source_file, got.source_dev, got.source_name, got.source_protocol) == \
            (want.source_file, want.source_dev, want.source_name, want.source_protocol)
        assert got.driver_cache == want.driver_cache
        assert [(h.name, h.port) for h in got.source_hosts] == \
            [(h.name, h.port) for h in want.source_hosts]
    assert [i.mac for i in dom.interfaces] == [v['address'] for v in request['network_info']]
    assert [i.virtualport and i.virtualport.interface_id for i in dom.interfaces] == \
        [i.virtualport and i.virtualport.interface_id for i in plan.domain.interfaces]
    assert [i.target_dev for i in dom.interfaces] == \
        [i.target_dev for i in plan.domain.interfaces]


def _edit(dom, virt_type):
    """Change one thing in ``dom``; return a function doing the same to lxml."""
    if virt_type == 'lxc':
        dom.filesystems[0].source_dir = '/srv/other-rootfs'
        return lambda node: node.find('devices/filesystem/source').set(
            'dir', '/srv/other-rootfs')
    disk = dom.disks[0]
    if disk.driver_cache is None:
        disk.source_file = '/srv/other-disk'
        return lambda node: node.find('devices/disk/source').set('file', '/srv/other-disk')
    disk.driver_cache = 'writeback'
    return lambda node: node.find('devices/disk/driver').set('cache', 'writeback')


@pytest.mark.parametrize('virt_type', bf.VIRT_TYPES)
@pytest.mark.parametrize('rescue', [False, True], ids=['spawn', 'rescue'])
def test_builder_output_through_test_driver(libvirt_module, virt_type, rescue):
    libvirt = libvirt_module
    conn = bf.libvirt_test_conn()
    conf = bf.make_conf(virt_type, {'libvirt.rng_dev_path': '/dev/urandom'})
    request = _full_request(bf.PREFIX[virt_type], rescue=rescue)
    plan = bf.build(conf, request)

    domain = conn.defineXML(plan.domain.to_xml())
    try:
        xml = domain.XMLDesc()
        dom = _assert_lossless(xml)
        _check_model_reads(dom, plan, request)

        apply_edit = _edit(dom, virt_type)
        expected = etree.fromstring(xml)
        apply_edit(expected)
        assert _canon(dom.format()) == _canon(expected)
        assert _canon(dom.format()) != _canon(xml)

        redefined = conn.defineXML(dom.to_xml())
        assert redefined.UUIDString() == request['instance']['uuid']
        after = redefined.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert _canon(after) == _canon(expected)
    finally:
        conn.lookupByUUIDString(request['instance']['uuid']).undefine()


def _qemu_system(libvirt):
    try:
        answer = subprocess.run(['virsh', '-c', 'qemu:///system', 'uri'],
                                capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        bf.skip_or_fail('virsh -c qemu:///system did not answer: %s' % e)
    if answer.returncode != 0:
        bf.skip_or_fail('libvirtd is not reachable at qemu:///system (run '
                        'tools/start-services.sh): %s' % answer.stderr.strip())
    try:
        return libvirt.open('qemu:///system')
    except libvirt.libvirtError as e:
        bf.skip_or_fail('cannot open qemu:///system: %s' % e)


def test_real_qemu_domain_xml_round_trips(libvirt_module):
    """Real libvirt adds controllers, addresses, aliases, the emulator, ...;
    the model must keep all of it through parse -> edit -> format."""
    libvirt = libvirt_module
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = _qemu_system(libvirt)
    name = 'ca-unit-xml-%s' % uuid.uuid4().hex[:8]
    inst_uuid = str(uuid.uuid4())
    conf = bf.make_conf('qemu', {'libvirt.rng_dev_path': '/dev/urandom'})
    request = _full_request('vd', name=name, uuid=inst_uuid)
    plan = bf.build(conf, request)
    domain = conn.defineXML(plan.domain.to_xml())
    try:
        xml = domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom = _assert_lossless(xml)
        assert dom.type == 'qemu'
        assert dom.emulator, 'real libvirt names the emulator'
        assert dom.controllers, 'real libvirt adds controllers'
        assert dom.os.machine and dom.os.arch
        _check_model_reads(dom, plan, request)
        assert {d.target_dev for d in dom.disks} == set(plan.devices.values())
        assert etree.fromstring(xml).xpath('devices/disk/address'), \
            'expected libvirt to assign disk addresses'

        dom.disks[0].driver_cache = 'writeback'
        expected = etree.fromstring(xml)
        expected.find('devices/disk/driver').set('cache', 'writeback')
        assert _canon(dom.format()) == _canon(expected)
        redefined = conn.defineXML(dom.to_xml())
        after = redefined.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert _canon(after) == _canon(expected)
    finally:
        conn.lookupByUUIDString(inst_uuid).undefine()
        conn.close()


def test_a_shared_object_is_held_by_many_parents_and_changed_by_none():
    """``XMLObject.shared``: one read-only object in many parents, written
    alike by each, also once a parent becomes a tree or is edited."""
    tablet = config.Input(type='tablet', bus='usb').shared()
    first, second = config.Domain(type='kvm'), config.Domain(type='kvm')
    first.add_device(tablet)
    second.add_device(tablet)
    expected = second.to_xml()
    assert '<input type="tablet" bus="usb"/>' in expected
    first.node.find('devices/input').set('bus', 'ps2')     # first's own copy
    assert 'bus="ps2"' in first.to_xml() and second.to_xml() == expected
    tree = config.Domain.parse(expected)
    tree.add_device(tablet)                                 # a parsed parent
    assert len(tree.node.findall('devices/input')) == 2
    for edit in (lambda: setattr(tablet, 'bus', 'ps2'),
                 lambda: setattr(tablet, 'bus', None),
                 lambda: tablet.node):
        with pytest.raises(TypeError, match='read-only'):
            edit()
    assert tablet.copy(bus='ps2').to_xml() == '<input type="tablet" bus="ps2"/>\n'
    assert second.to_xml() == expected
    info = config.SysInfo(type='smbios')
    info.add('system', config.SysInfoEntry(name='a', value='b'))
    with pytest.raises(TypeError, match='without children'):
        info.shared()
