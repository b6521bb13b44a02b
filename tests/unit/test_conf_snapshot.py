"""Read-once configuration views (compute_agent.conf.snapshot): the same
values as the ConfigOpts, shared until the configuration changes, never stale
after a change."""

import pytest
from oslo_config import cfg

from compute_agent.conf import snapshot as snap_mod

try:
    from tests.unit import builder_fixtures as bf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import builder_fixtures as bf


def test_values_are_the_configurations():
    conf = bf.make_conf('qemu', {'libvirt.disk_cachemode': 'writeback',
                                 'use_cow_images': False})
    view = snap_mod.snapshot(conf)
    assert view.libvirt.virt_type == 'qemu'
    assert view.libvirt.disk_cachemode == 'writeback'
    assert view.use_cow_images is False
    assert view.instances_path == conf.instances_path
    assert view.vnc.keymap == conf.vnc.keymap
    with pytest.raises(cfg.NoSuchOptError):
        assert view.libvirt.no_such_option is None  # never reached
    with pytest.raises(AttributeError):
        view.use_cow_images = True


def test_one_view_until_the_configuration_changes():
    conf = bf.make_conf('kvm')
    view = snap_mod.snapshot(conf)
    assert view.libvirt.cpu_mode is None
    assert snap_mod.snapshot(conf) is view
    conf.set_override('cpu_mode', 'host-passthrough', 'libvirt')
    assert snap_mod.snapshot(conf) is not view
    assert snap_mod.snapshot(conf).libvirt.cpu_mode == 'host-passthrough'
    conf.clear_override('cpu_mode', 'libvirt')
    assert snap_mod.snapshot(conf).libvirt.cpu_mode is None
    conf.set_default('disk_cachemode', 'unsafe', 'libvirt')
    assert snap_mod.snapshot(conf).libvirt.disk_cachemode == 'unsafe'


def test_reload_and_reparse_give_a_new_view(tmp_path):
    path = tmp_path / 'agent.conf'
    path.write_text('[libvirt]\nhw_machine_type = pc\n')
    conf = bf.make_conf('kvm')
    conf([], project='compute-agent', default_config_files=[str(path)])
    assert snap_mod.snapshot(conf).libvirt.hw_machine_type == 'pc'
    path.write_text('[libvirt]\nhw_machine_type = q35\n')
    conf.reload_config_files()
    assert snap_mod.snapshot(conf).libvirt.hw_machine_type == 'q35'
    conf([], project='compute-agent', default_config_files=[])
    assert snap_mod.snapshot(conf).libvirt.hw_machine_type is None


def test_anything_else_gets_a_fresh_view():
    class Plain:
        use_cow_images = True
    plain = Plain()
    view = snap_mod.snapshot(plain)
    assert view.use_cow_images is True
    assert snap_mod.snapshot(plain) is not view


def test_builder_sees_a_changed_configuration():
    """The builder reads through the view: an override between two builds
    shows in the second."""
    conf = bf.make_conf('kvm')
    request = bf.make_request()
    first = bf.build(conf, request)
    conf.set_override('disk_cachemode', 'writeback', 'libvirt')
    conf.set_override('cpu_mode', 'host-passthrough', 'libvirt')
    second = bf.build(conf, request)
    assert first.domain.disks[0].driver_cache == 'none'
    assert second.domain.disks[0].driver_cache == 'writeback'
    assert first.domain.cpu.mode == 'host-model'
    assert second.domain.cpu.mode == 'host-passthrough'


def test_derived_is_made_once_until_the_configuration_changes():
    conf = bf.make_conf('kvm')
    made = []

    def make(opts):
        made.append(opts.libvirt.cpu_mode)
        return object()
    first = snap_mod.derived(conf, make)
    assert snap_mod.derived(conf, make) is first and made == [None]
    conf.set_override('cpu_mode', 'host-passthrough', 'libvirt')
    assert snap_mod.derived(conf, make) is not first
    assert made == [None, 'host-passthrough']


def test_a_guest_edited_changes_no_other_of_its_configuration():
    """What every guest of a configuration writes alike is one read-only
    object (``XMLObject.shared``), the rest is copied per guest: a shared
    part refuses an edit, the guest's own parts and its tree take it, and
    the next guest is as it was."""
    conf = bf.make_conf('kvm', {'vnc.enabled': True})
    request = bf.make_request()
    first, second = bf.build(conf, request), bf.build(conf, request)
    expected = second.domain.to_xml()
    assert first.domain.graphics[0] is second.domain.graphics[0]
    assert first.domain.disks[0] is not second.domain.disks[0]
    with pytest.raises(TypeError, match='read-only'):
        first.domain.graphics[0].keymap = 'de'
    with pytest.raises(TypeError, match='read-only'):
        first.domain.features.pae = True
    with pytest.raises(TypeError, match='read-only'):
        _ = first.domain.features.node      # a tree is what it refuses
    first.domain.disks[0].driver_cache = 'unsafe'
    first.domain.sysinfo.add('system', first.domain.sysinfo.system[0].copy(value='x'))
    assert first.domain.node.tag == 'domain'   # a tree of its own from here
    first.domain.graphics[0].keymap = 'de'
    first.domain.features.pae = True
    edited = first.domain.to_xml()
    assert ('keymap="de"' in edited and '<pae/>' in edited
            and 'cache="unsafe"' in edited)
    assert bf.build(conf, request).domain.to_xml() == expected
    assert second.domain.to_xml() == expected
