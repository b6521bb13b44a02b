"""The domain XML the agent writes comes from ``xmlnode.serialize``, not
from lxml: it must be the text lxml writes for the same tree, for every guest
of the builder's case table and for every value that needs escaping."""

import pytest
from lxml import etree

from compute_agent.virt import config
from compute_agent.virt import xmlnode
from compute_agent.virt.xmlbase import canonical

try:
    from tests.unit import builder_fixtures as bf
    from tests.unit import test_builder as tb
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf
    import test_builder as tb


def lxml_twin(node, parent=None):
    """The same tree made with lxml's own element API (no text parsed)."""
    el = (etree.Element(node.tag) if parent is None
          else etree.SubElement(parent, node.tag))
    for key, value in node.attrib.items():
        el.set(key, value)
    el.text = node.text
    for child in node.children:
        lxml_twin(child, el)
    return el


def assert_like_lxml(obj):
    """``obj`` (a new model object) serializes as lxml serializes its twin,
    pretty and not, byte for byte and canonically."""
    node = obj._n
    assert node.__class__ is xmlnode.Node
    root = node
    while root.parent is not None:
        root = root.parent
    twin_root = lxml_twin(root)
    path = []
    n = node
    while n.parent is not None:
        path.append(n.parent.children.index(n))
        n = n.parent
    twin = twin_root
    for i in reversed(path):
        twin = twin[i]
    for pretty in (True, False):
        ours = obj.to_xml(pretty=pretty)
        assert ours == etree.tostring(twin, pretty_print=pretty, encoding='unicode')
    assert canonical(etree.fromstring(obj.to_xml())) == canonical(twin)


@pytest.mark.parametrize('case', tb.MATRIX, ids=[tb._matrix_id(c) for c in tb.MATRIX])
def test_every_guest_of_the_case_table_serializes_like_lxml(case):
    virt_type, rescue, kernel, fmt, vifs, vols, cd, vnc = case
    p = bf.PREFIX[virt_type]
    conf = bf.make_conf(virt_type, {'vnc.enabled': vnc,
                                    'libvirt.rng_dev_path': '/dev/urandom'})
    plan = tb.plan_for(
        conf=conf, rescue=rescue, kernel_id=kernel, ramdisk_id=kernel and 'ramdisk-1',
        disk_format=fmt, config_drive=cd, flavor={'ephemeral_gb': 1, 'swap': 64},
        network_info=bf.all_vifs() if vifs else [],
        block_device_info=bf.bdi(ephemerals=[bf.ephemeral(1, p + 'd')],
                                 volumes=bf.all_volumes(p)) if vols else None)
    assert_like_lxml(plan.domain)
    for disk in plan.domain.disks:      # a device alone, as hot-plug writes it
        assert_like_lxml(disk)


EDGES = ['a&b', 'a<b', 'a>b', 'say "hi"', "it's", 'a]]>b', '&amp;', '&#10;',
         'line\nbreak', 'cr\rhere', 'tab\there', 'café', '😀 ☃', 'ünï "&<>" ✓',
         ' lead and trail ', '']


@pytest.mark.parametrize('value', EDGES, ids=repr)
def test_escaping_matches_lxml(value):
    dom = config.Domain(type='kvm', name=value, uuid='u')
    dom.os = config.OS(type='hvm', cmdline=value)
    disk = dom.add_device(config.Disk(type='file', source_file=value, target_dev='vda'))
    disk.serial = value
    dom.add_device(config.Interface(type='bridge', mac='fa:16:3e:00:00:01',
                                    source_bridge=value))
    assert_like_lxml(dom)
    assert_like_lxml(disk)      # a sub-element: lxml's own attribute quirk
    parsed = config.Domain.parse(dom.to_xml())
    text = value or None            # an empty element has no text
    assert (parsed.name, parsed.os.cmdline, parsed.disks[0].serial) == (text,) * 3
    assert parsed.disks[0].source_file == value


@pytest.mark.parametrize('bad', ['nul\x00', 'bell\x07', 'esc\x1b[0m', '\x0b', '\x0c',
                                 '\ufffe', '\uffff', 'lone \ud800'], ids=repr)
def test_text_xml_cannot_hold_is_refused_like_lxml(bad):
    with pytest.raises(ValueError):
        etree.Element('x').set('a', bad)
    for obj in (config.Disk(), config.Disk.parse('<disk/>')):
        with pytest.raises(ValueError):
            obj.source_file = bad
        with pytest.raises(ValueError):
            obj.serial = bad
        with pytest.raises(ValueError):
            config.Disk(source_file=bad)
