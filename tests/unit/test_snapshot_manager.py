"""snapshot_ops on a real Manager and LibvirtDriver (``test:///default``,
real qemu-img and files): a running guest under ``snapshot_pause_max_mb``
is marked in its record, paused, copied and resumed; a restart resumes a
guest the snapshot paused, and only such a guest."""

import os

import libvirt
import pytest

from compute_agent import states

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf


h = mf.h     # the plain harness fixture


def snapshot(h, uuid, image_id):
    args = h.manager.validate('snapshot', {'instance_uuid': uuid, 'image_id': image_id},
                              '1.1')
    return h.manager.dispatch('snapshot', args, mf.context())


def test_the_record_is_marked_while_the_guest_is_paused(h, monkeypatch):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    seen = []
    real_suspend = libvirt.virDomain.suspend

    def suspend(dom):
        seen.append(h.journal.get_instance(uuid).get('snapshot_paused'))
        return real_suspend(dom)
    monkeypatch.setattr(libvirt.virDomain, 'suspend', suspend)
    meta = snapshot(h, uuid, 'snap-unit-1')
    assert seen == [True]                  # marked (durably) before the pause
    assert h.journal.get_instance(uuid).get('snapshot_paused') is None
    assert h.libvirt_state(uuid)[0] == libvirt.VIR_DOMAIN_RUNNING
    assert meta['checksum'].startswith('sha256:')
    assert os.path.exists(os.path.join(h.store, 'snap-unit-1'))


def test_bound_zero_never_pauses(h, monkeypatch):
    h.conf.set_override('snapshot_pause_max_mb', 0, 'libvirt')
    instance, _ = h.spawn()
    monkeypatch.setattr(libvirt.virDomain, 'suspend', lambda dom: pytest.fail('paused'))
    # test:///default has no block copy: the refusal shows the path taken.
    with pytest.raises(libvirt.libvirtError):
        snapshot(h, instance['uuid'], 'snap-unit-2')
    assert h.libvirt_state(instance['uuid'])[0] == libvirt.VIR_DOMAIN_RUNNING
    assert not os.path.exists(os.path.join(h.store, 'snap-unit-2'))


@pytest.mark.parametrize('marked', [True, False])
def test_recovery_resumes_only_a_guest_the_snapshot_paused(h, marked):
    instance, _ = h.spawn()
    uuid = instance['uuid']
    h.domain(uuid).suspend()
    h.force_record(uuid, task_state='image_snapshot', snapshot_paused=marked or None)
    # A new agent process: a new Manager over the same journal and host.
    type(h.manager)(h.conf, h.driver, h.journal, h.notifier).recover()
    record = h.journal.get_instance(uuid)
    assert record['task_state'] is None and record.get('snapshot_paused') is None
    if marked:
        assert h.libvirt_state(uuid)[0] == libvirt.VIR_DOMAIN_RUNNING
        assert (record['vm_state'], record['power_state']) == (states.ACTIVE,
                                                                states.RUNNING)
    else:
        assert h.libvirt_state(uuid)[0] == libvirt.VIR_DOMAIN_PAUSED
        assert (record['vm_state'], record['power_state']) == (states.PAUSED_VM,
                                                                states.PAUSED)
