"""Model objects built from scratch (pure-Python ``xmlnode.Node`` trees)
behave exactly like parsed ones (lxml elements): same XML text, same reads,
same errors, and views stay live when a tree turns into lxml elements.
"""

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from lxml import etree

from compute_agent.virt import config
from compute_agent.virt import xmlnode
from compute_agent.virt.xmlbase import Flag, Prop, YesNo, OnOff, Int

FAST = settings(max_examples=25, deadline=None)

# Any text lxml accepts, with everything serializing must escape.
XML_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from('&<>"\'\n\r\t ]]>é😀'),
        st.characters(blacklist_categories=('Cs', 'Cc'),
                      blacklist_characters='\ufffe\uffff')),
    min_size=1, max_size=12)


def scalar(prop):
    if isinstance(prop, Flag):
        return st.booleans()
    if prop.kind is Int:
        return st.integers(min_value=-2 ** 63, max_value=2 ** 64)
    if prop.kind in (YesNo, OnOff):
        return st.booleans()
    return XML_TEXT


def scalars(cls):
    return {name: prop for name, prop in cls.properties().items()
            if isinstance(prop, (Prop, Flag))}


def both(cls, values):
    """The same values set on a new object (Node) and a parsed one (lxml)."""
    new = cls(**values)
    parsed = cls.parse('<%s/>' % cls.TAG)
    for name, value in values.items():
        setattr(parsed, name, value)
    assert new._n.__class__ is xmlnode.Node
    assert parsed._n.__class__ is not xmlnode.Node
    return new, parsed


def assert_same(new, parsed):
    assert new.to_xml() == parsed.to_xml()
    assert new.to_xml(pretty=False) == parsed.to_xml(pretty=False)
    assert new.canonical() == parsed.canonical()
    for name in type(new).properties():
        assert getattr(new, name) == getattr(parsed, name), name


@pytest.mark.parametrize('cls', config.ALL_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_new_and_parsed_objects_agree(cls, data):
    props = scalars(cls)
    names = data.draw(st.lists(st.sampled_from(sorted(props)), unique=True),
                      label='names')
    values = {name: data.draw(scalar(props[name]), label=name) for name in names}
    new, parsed = both(cls, values)
    assert_same(new, parsed)
    for name in data.draw(st.permutations(names), label='removal order'):
        setattr(new, name, None if isinstance(props[name], Prop) else False)
        setattr(parsed, name, None if isinstance(props[name], Prop) else False)
        assert_same(new, parsed)


def seed_domain():
    dom = config.Domain(type='kvm', name='n', uuid='u', memory_kib=1, vcpus=1)
    dom.os = config.OS(type='hvm', kernel='/k', cmdline='console=ttyS0 a&b')
    dom.features = config.Features(acpi=True)
    disk = dom.add_device(config.Disk(type='file', source_file='/d', target_dev='vda',
                                      driver_name='qemu'))
    dom.add_device(config.Serial(type='pty'))
    dom.memballoon = config.MemBalloon(model='none')
    return dom, disk


def test_a_built_domain_serializes_like_lxml():
    dom, disk = seed_domain()
    text = dom.to_xml()
    lx = dom.format()
    assert text == etree.tostring(lx, pretty_print=True, encoding='unicode')
    assert disk.to_xml() == etree.tostring(lx.find('devices/disk'),
                                           pretty_print=True, encoding='unicode')
    assert config.Domain.parse(text) == dom


def test_views_stay_live_when_the_tree_becomes_lxml():
    dom, disk = seed_domain()
    os_ = dom.os
    node = dom.node                 # materializes the whole tree
    assert isinstance(node, etree._Element)
    assert disk.node.getparent().getparent() is node
    disk.target_dev = 'vdb'
    os_.cmdline = None
    assert node.find('devices/disk/target').get('dev') == 'vdb'
    assert node.find('os/cmdline') is None
    assert dom.disks[0].target_dev == 'vdb'
    assert '<target dev="vdb"/>' in dom.to_xml()


def test_new_and_parsed_parts_mix():
    dom, _ = seed_domain()
    parsed_disk = config.Disk.parse('<disk type="file"><target dev="vdc"/>'
                                    '<unknown a="1"/></disk>')
    dom.add_device(parsed_disk)
    assert [d.target_dev for d in dom.disks] == ['vda', 'vdc']
    assert dom.node.find('devices/disk[2]/unknown').get('a') == '1'

    parsed = config.Domain.parse('<domain><devices/></domain>')
    parsed.add_device(config.Disk(target_dev='vdd'))
    parsed.os = config.OS(type='hvm')
    assert parsed.disks[0].target_dev == 'vdd'
    assert parsed.to_xml(pretty=False) == (
        '<domain><os><type>hvm</type></os><devices><disk><target dev="vdd"/>'
        '</disk></devices></domain>')


def test_adding_a_child_twice_moves_it():
    dom = config.Domain()
    disk = config.Disk(target_dev='vda')
    dom.add_device(disk)
    other = config.Domain()
    other.add_device(disk)
    assert dom.disks == [] and len(other.disks) == 1


@pytest.mark.parametrize('bad', ['a\x00b', '\x01', 'x\x1f', '\ufffe', '\ud800'])
def test_text_xml_cannot_hold_is_refused_as_lxml_does(bad):
    for obj in (config.Disk(), config.Disk.parse('<disk/>')):
        with pytest.raises(ValueError):
            obj.serial = bad
        with pytest.raises(ValueError):
            obj.source_file = bad
