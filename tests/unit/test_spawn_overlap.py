"""A spawn's steps run at once (virt/overlap.py, driver.spawn): what must
still hold.

- The 'spawning' record is durable before the domain is defined (recovery
  knows every domain it may have to remove); files are made only after it,
  since that commit claims the name the instance directory is named by.
- Every file started has ended, made or removed, when a spawn fails, and
  the failure leaves nothing (no domain, no directory, no temp file).
- A repeated spawn boots an existing stopped domain only when all its
  files are complete; otherwise it starts over.

Real Manager, LibvirtDriver on ``test:///default``, journal and qemu-img
(manager_fixtures).
"""

import os
import threading

import libvirt
import pytest

from compute_agent import exception
from compute_agent import states
from compute_agent.virt import configdrive
from compute_agent.virt import disks
from compute_agent.virt import overlap
from compute_agent.virt.plan import DiskFile

try:
    from tests.unit.manager_fixtures import (  # noqa: F401
        IMAGE_ID, context, h, make_instance)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from manager_fixtures import (  # noqa: F401
        IMAGE_ID, context, h, make_instance)

META = {'id': IMAGE_ID, 'disk_format': 'qcow2'}


def _leftovers(h, instance):
    path = h.instance_dir(instance)
    return sorted(os.listdir(path)) if os.path.exists(path) else None


# -- ordering ------------------------------------------------------------------------

def test_record_is_durable_before_define_and_before_any_file(h, monkeypatch):
    seen = {}
    define = libvirt.virConnect.defineXML
    make = configdrive.build_config_drive

    def journal_view(uuid):
        # A fresh connection to the journal's file: what a restart would read.
        from compute_agent.journal import Journal
        other = Journal(h.conf.state_path)
        try:
            rec = other.get_instance(uuid)
        finally:
            other.close()
        return rec and (rec['vm_state'], rec['task_state'])

    def spy_define(conn, xml):
        seen['define'] = journal_view(instance['uuid'])
        return define(conn, xml)

    def spy_drive(path, *a, **k):
        seen['file'] = journal_view(instance['uuid'])
        return make(path, *a, **k)
    monkeypatch.setattr(libvirt.virConnect, 'defineXML', spy_define)
    monkeypatch.setattr(configdrive, 'build_config_drive', spy_drive)
    instance = make_instance(config_drive=True)
    _, rec = h.spawn(instance)
    assert rec['vm_state'] == states.ACTIVE
    assert seen == {'define': ('building', 'spawning'),
                    'file': ('building', 'spawning')}


def test_files_and_define_run_at_once(h, monkeypatch):
    """defineXML is called while the files are still being made (each
    waits for the other, so they can only both return if they overlap)."""
    both = threading.Barrier(2, timeout=10)
    define = libvirt.virConnect.defineXML
    make = configdrive.build_config_drive

    def spy_define(conn, xml):
        both.wait()
        return define(conn, xml)

    def spy_drive(*a, **k):
        both.wait()
        return make(*a, **k)
    monkeypatch.setattr(libvirt.virConnect, 'defineXML', spy_define)
    monkeypatch.setattr(configdrive, 'build_config_drive', spy_drive)
    _, rec = h.spawn(make_instance(config_drive=True))
    assert rec['vm_state'] == states.ACTIVE


# -- failures leave nothing --------------------------------------------------------

def test_failed_config_drive_while_the_overlay_is_made_leaves_nothing(h, monkeypatch):
    def broken(*_a, **_k):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(configdrive, 'build_config_drive', broken)
    instance = make_instance(config_drive=True)
    with pytest.raises(OSError):
        h.spawn(instance)
    assert _leftovers(h, instance) is None
    assert h.domain(instance['uuid']) is None
    assert h.journal.get_instance(instance['uuid'])['vm_state'] == states.ERROR


def test_failed_define_while_the_files_are_made_leaves_nothing(h, monkeypatch):
    def broken(_conn, _xml):
        raise libvirt.libvirtError('defineXML refused (test)')
    monkeypatch.setattr(libvirt.virConnect, 'defineXML', broken)
    instance = make_instance(config_drive=True)
    with pytest.raises(libvirt.libvirtError):
        h.spawn(instance)
    assert _leftovers(h, instance) is None
    assert h.domain(instance['uuid']) is None


def test_failed_overlay_while_the_domain_is_defined_leaves_nothing(h, monkeypatch):
    real = disks.start_overlay

    def too_big(base, path, size_bytes=0, disk_format=None):
        return real(base, path, 1 << 70, disk_format)    # qemu-img refuses it
    monkeypatch.setattr(disks, 'start_overlay', too_big)
    instance = make_instance(config_drive=True)
    with pytest.raises(disks.DiskCreateError):
        h.spawn(instance)
    assert _leftovers(h, instance) is None
    assert h.domain(instance['uuid']) is None


# -- a repeated spawn of an existing domain -------------------------------------------

def _defined_with_files(h, instance, drop=None):
    """The planned domain defined (not started) and its files made, but
    ``drop``: what a spawn killed in the middle can leave."""
    plan = h.manager.planner.spawn(instance, META)
    inst_dir = disks.instance_dir(h.conf, instance['name'], create=True)
    for f in plan.files:
        if f.name != drop:
            h.driver._create_file(plan, inst_dir, f)
    h.conn.defineXML(plan.xml())
    return plan


@pytest.mark.parametrize('drop', [None, 'disk', 'disk.config'])
def test_existing_stopped_domain_boots_only_with_all_its_files(h, drop):
    instance = make_instance(config_drive=True)
    plan = _defined_with_files(h, instance, drop)
    h.driver.spawn(plan)
    assert h.libvirt_state(instance['uuid'])[0] == libvirt.VIR_DOMAIN_RUNNING
    assert _leftovers(h, instance) == sorted(f.name for f in plan.files)


def test_existing_domain_with_a_missing_file_is_made_again_not_booted(h, monkeypatch):
    instance = make_instance(config_drive=True)
    plan = _defined_with_files(h, instance, drop='disk')
    defined = []
    define = libvirt.virConnect.defineXML
    monkeypatch.setattr(libvirt.virConnect, 'defineXML',
                        lambda conn, xml: defined.append(1) or define(conn, xml))
    h.driver.spawn(plan)
    assert defined == [1]       # removed and defined afresh
    complete = _defined_with_files(h, make_instance(config_drive=True))
    defined.clear()
    h.driver.spawn(complete)
    assert defined == []        # complete: started as it was


# -- the pieces ----------------------------------------------------------------------

def test_run_all_returns_values_in_order():
    assert overlap.run_all([lambda: 1, lambda: 2, lambda: 3]) == [1, 2, 3]
    assert overlap.run_all([]) == []


def test_run_all_waits_for_every_call_and_raises_the_first_failure():
    ended = []
    slow = threading.Event()

    def first():
        slow.wait(5)
        ended.append('first')
        raise ValueError('first')

    def last():
        ended.append('last')
        slow.set()
        raise KeyError('last')
    with pytest.raises(ValueError):
        overlap.run_all([first, last])
    assert sorted(ended) == ['first', 'last']


def test_started_overlay_failure_removes_its_temp_file(tmp_path):
    base = tmp_path / 'base'
    disks._run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(base), '1M'],
               str(base))
    pending = disks.start_overlay(str(base), str(tmp_path / 'disk'), 1 << 70)
    with pytest.raises(disks.DiskCreateError) as err:
        pending.wait()
    assert 'qemu-img create exited' in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ['base']


def test_started_overlay_is_renamed_into_place(tmp_path):
    base = tmp_path / 'base'
    disks._run(['qemu-img', 'create', '-q', '-f', 'qcow2', str(base), '1M'],
               str(base))
    pending = disks.start_disk(None, str(tmp_path), DiskFile('disk', 'root', 'qcow2', 2 << 20),
                               str(base), 'qcow2')
    assert isinstance(pending, disks.Pending)
    path = pending.wait()
    assert sorted(os.listdir(tmp_path)) == ['base', 'disk']
    info = disks.qemu_img_info(path)
    assert (info['format'], info['virtual-size']) == ('qcow2', 2 << 20)
    assert info['backing-filename'] == str(base)


def test_spawn_records_power_and_vnc_from_one_lookup(h, monkeypatch):
    h.conf.set_override('enabled', True, 'vnc')
    lookups = []
    real = libvirt.virConnect.lookupByUUIDString
    instance = make_instance()
    monkeypatch.setattr(
        libvirt.virConnect, 'lookupByUUIDString',
        lambda conn, uuid: lookups.append(uuid) or real(conn, uuid))
    _, rec = h.spawn(instance)
    # the existence check, the start, and power + VNC at the end
    assert len(lookups) == 3
    assert (rec['power_state'], rec['vnc']) == (states.RUNNING, None)
    assert isinstance(h.manager._checked.get(instance['uuid']), str)


def test_power_and_vnc_of_a_vanished_guest(h):
    h.conf.set_override('enabled', True, 'vnc')
    instance = make_instance()
    assert h.driver.get_power_state_and_vnc(instance) == (states.NOSTATE, None)
    with pytest.raises(exception.InstanceNotFound):
        h.driver.get_vnc_console(instance)
