"""New model objects are written from their events (``xmltemplate``), not
from a tree: the text must be what the replayed Node tree gives (which
test_xml_serializer holds to lxml), for every guest of the builder's case
table, every device alone, and every value that needs escaping."""

import pytest

from compute_agent.virt import config

try:
    from tests.unit import builder_fixtures as bf
    from tests.unit import test_builder as tb
    from tests.unit import test_xml_serializer as ts
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf
    import test_builder as tb
    import test_xml_serializer as ts


def texts(objs):
    return [(obj.to_xml(), obj.to_xml(pretty=False)) for obj in objs]


def assert_like_nodes(dom, parts):
    """Write ``dom`` and ``parts`` (its sub-elements) lazily, then the same
    after replaying them into Nodes; the texts must be equal."""
    objs = [dom] + list(parts)
    assert all(obj._v is not None for obj in objs)      # still lazy
    lazy = texts(objs)
    assert dom._n is not None                           # replays the tree
    assert all(obj._v is None for obj in objs)
    assert texts(objs) == lazy


@pytest.mark.parametrize('case', tb.MATRIX, ids=[tb._matrix_id(c) for c in tb.MATRIX])
def test_every_guest_of_the_case_table_is_written_as_its_nodes(case):
    virt_type, rescue, kernel, fmt, vifs, vols, cd, vnc = case
    p = bf.PREFIX[virt_type]
    conf = bf.make_conf(virt_type, {'vnc.enabled': vnc,
                                    'libvirt.rng_dev_path': '/dev/urandom'})
    plan = bf.plan_for(
        conf=conf, rescue=rescue, kernel_id=kernel, ramdisk_id=kernel and 'ramdisk-1',
        disk_format=fmt, config_drive=cd, flavor={'ephemeral_gb': 1, 'swap': 64},
        network_info=bf.all_vifs() if vifs else [],
        block_device_info=bf.bdi(ephemerals=[bf.ephemeral(1, p + 'd')],
                                 volumes=bf.all_volumes(p)) if vols else None)
    dom = plan.domain
    if dom._v is None:
        # The builder removes <driver> from a UML guest's volume disks: a
        # removal replays the tree (test_xml_serializer covers its text).
        assert virt_type == 'uml' and vols
        return
    assert_like_nodes(dom, dom.disks + dom.interfaces)


@pytest.mark.parametrize('value', ts.EDGES, ids=repr)
def test_escaping_is_the_nodes(value):
    dom = config.Domain(type='kvm', name=value, uuid='u')
    dom.os = config.OS(type='hvm', cmdline=value)
    disk = dom.add_device(config.Disk(type='file', source_file=value, target_dev='vda'))
    disk.serial = value
    iface = dom.add_device(config.Interface(type='bridge', mac='fa:16:3e:00:00:01',
                                            source_bridge=value))
    entry = config.SysInfoEntry(name=value, value=value)
    info = config.SysInfo(type='smbios')
    info.add('system', entry)
    dom.sysinfo = info
    assert_like_nodes(dom, [disk, iface, dom.os, info, entry])


def test_a_shape_is_laid_out_once_and_reused():
    def disk(path):
        return config.Disk(type='file', source_file=path, target_dev='vda')
    first = disk('/a').to_xml()
    layouts = dict(config.Disk._LAYOUTS)
    assert disk('/b%').to_xml() == first.replace('/a', '/b%')
    assert config.Disk._LAYOUTS == layouts


def test_a_copy_is_new_and_its_own():
    info = config.SysInfo(type='smbios')
    info.add('system', config.SysInfoEntry(name='serial', value='a'))
    twin = info.copy(type='other')
    twin.system[0].value = 'b'
    assert info.to_xml() == ('<sysinfo type="smbios">\n  <system>\n'
                             '    <entry name="serial">a</entry>\n  </system>\n</sysinfo>\n')
    assert twin._v is not None and twin.to_xml() == (
        info.to_xml().replace('smbios', 'other').replace('>a<', '>b<'))
    parsed = config.Disk.parse('<disk type="file"><target dev="vda"/></disk>')
    assert parsed.copy(target_dev='vdb').to_xml(pretty=False) == (
        '<disk type="file"><target dev="vdb"/></disk>')
    disk = config.Disk(type='file')
    assert disk.copy(boot_order=2, readonly=True).to_xml(pretty=False) == (
        '<disk type="file"><boot order="2"/><readonly/></disk>')
    with pytest.raises(AttributeError):
        disk.copy(no_such=1)
    with pytest.raises(ValueError):
        disk.copy(target_dev='a\x01')
