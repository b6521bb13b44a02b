"""End to end: resize, confirm_resize and revert_resize on this host.

docs: protocol-method-resize. The real agent over RabbitMQ, real QEMU
guests. The test guest prints its memory, vCPU count and disk sizes at
every boot (MEMTOTAL-KB, NPROC, DISK-SIZE) and keeps a boot counter on its
root disk (DISK-COUNTER, meta ``disk_counter``): the counter each boot
finds shows which disk content it booted from, so a revert that puts the
disk back exactly as it was before the resize shows the count from before
the resize, not the one the resized guest wrote. Needs root, RabbitMQ,
libvirtd and the test guest; fails in CI otherwise.
"""

import os
import xml.etree.ElementTree as ET

import pytest

from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        BOOT_MARKER, agent, no_domain, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import InFlight
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from agent_fixture import (  # noqa: F401
        BOOT_MARKER, agent, no_domain, open_libvirt, test_guest, wait_until)
    from agent_messages import InFlight

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(900)]

GiB = 1 << 30
OLD = {'memory_mb': 128, 'vcpus': 1, 'root_gb': 1, 'ephemeral_gb': 1, 'swap': 0}
NEW = {'memory_mb': 256, 'vcpus': 2, 'root_gb': 2, 'ephemeral_gb': 2, 'swap': 0}
BOOT_TIMEOUT = 180
SAVED = '.pre-resize'


def probes(out):
    """What one boot printed: memory, vCPUs, disk sizes, counter."""
    seen = {'disks': {}}
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == 'MEMTOTAL-KB':
            seen['mem_kb'] = int(words[1])
        elif len(words) == 2 and words[0] == 'NPROC':
            seen['nproc'] = int(words[1])
        elif len(words) == 3 and words[0] == 'DISK-SIZE':
            seen['disks'][words[1]] = int(words[2])
        elif len(words) == 3 and words[0] == 'DISK-COUNTER':
            seen['counter'] = int(words[2])
    return seen


def boot(agent, uuid, since):
    """The probes of the boot after console mark ``since``."""
    return probes(agent.wait_console(uuid, '\nREADY', timeout=BOOT_TIMEOUT,
                                     since=since))


def saved_files(agent, inst):
    return sorted(n for n in os.listdir(agent.instance_dir(inst)) if SAVED in n)


def domain_size(uuid):
    """(memory KiB, vcpus) of the guest's defined domain."""
    lv = open_libvirt()
    try:
        root = ET.fromstring(lv.lookupByUUIDString(uuid).XMLDesc(0))
    finally:
        lv.close()
    return int(root.find('memory').text), int(root.find('vcpu').text)


def assert_record(rec, vm_state, flavor):
    assert (rec['vm_state'], rec['task_state'], rec['power_state'], rec['error']) == (
        vm_state, None, 1, None), rec
    assert rec['flavor'] == flavor


def assert_guest(seen, flavor, before=None):
    """The boot shows ``flavor``'s vCPUs and disk sizes, and memory like
    ``before`` (the same flavor's boot) or clearly above it."""
    assert seen['nproc'] == flavor['vcpus'], seen
    assert seen['disks']['vda'] == flavor['root_gb'] * GiB, seen
    assert seen['disks']['vdb'] == flavor['ephemeral_gb'] * GiB, seen
    if before is not None:
        grew = flavor['memory_mb'] - before['flavor']['memory_mb']
        if grew:
            assert seen['mem_kb'] > before['mem_kb'] + grew * 1024 * 3 // 4, seen
        else:
            assert seen['mem_kb'] == before['mem_kb'], seen


@pytest.fixture(scope='module')
def guest(agent):
    """A guest on OLD that keeps a boot counter on vda; its first boot."""
    inst = agent.make_instance('rsz', metadata={'disk_counter': 'vda'},
                               flavor=dict(OLD))
    mark = 0
    _, rec = agent.spawn(inst)
    assert_record(rec, 'active', OLD)
    seen = dict(boot(agent, inst['uuid'], mark), flavor=OLD)
    assert_guest(seen, OLD)
    assert seen['counter'] == 0
    return inst, seen


def resize(agent, uuid, flavor):
    mark, since = agent.console_mark(uuid), agent.reports.mark()
    rec = agent.call('resize', instance_uuid=uuid, flavor=flavor)
    return rec, mark, since


def test_shrink_is_refused_and_touches_nothing(agent, guest):
    inst, _ = guest
    uuid = inst['uuid']
    files = sorted(os.listdir(agent.instance_dir(inst)))
    for field in ('root_gb', 'ephemeral_gb'):
        with pytest.raises(RemoteError) as ei:
            agent.call('resize', instance_uuid=uuid,
                       flavor=dict(NEW, **{field: 0}))
        assert ei.value.exc_type == 'InvalidRequest'
        assert 'flavor.' + field in ei.value.value
        assert_record(dict(agent.get_info(uuid), error=None), 'active', OLD)
        assert agent.get_info(uuid)['error']['class'] == 'InvalidRequest'
    assert sorted(os.listdir(agent.instance_dir(inst))) == files
    assert domain_size(uuid) == (OLD['memory_mb'] * 1024, OLD['vcpus'])


def test_resize_revert_then_resize_confirm(agent, guest):
    """must-show 3: grow memory, vCPUs, root (and ephemeral) disk; revert
    gives back the old values and the disk content; confirm of a second
    resize keeps the new ones."""
    inst, first = guest
    uuid = inst['uuid']

    rec, mark, since = resize(agent, uuid, NEW)
    assert_record(rec, 'resized', NEW)
    assert [(r['event'], r['vm_state'], r['task_state'])
            for r in agent.reports.states(uuid, since)] == [
        ('resize.start', 'active', 'resize_migrating'),
        ('resize.start', 'active', 'resize_finish'),
        ('resize.end', 'resized', None)]
    resized = dict(boot(agent, uuid, mark), flavor=NEW)
    assert_guest(resized, NEW, first)
    assert resized['counter'] == first['counter'] + 1     # the disk's content
    assert domain_size(uuid) == (NEW['memory_mb'] * 1024, NEW['vcpus'])
    assert saved_files(agent, inst) == sorted(['disk' + SAVED, 'disk.local' + SAVED])

    mark = agent.console_mark(uuid)
    rec = agent.call('revert_resize', instance_uuid=uuid)
    assert_record(rec, 'active', OLD)
    reverted = boot(agent, uuid, mark)
    assert_guest(reverted, OLD, first)
    # The resized guest wrote counter+1 again; the reverted disk has not seen it.
    assert reverted['counter'] == resized['counter']
    assert saved_files(agent, inst) == []
    assert domain_size(uuid) == (OLD['memory_mb'] * 1024, OLD['vcpus'])

    rec, mark, _ = resize(agent, uuid, NEW)
    assert_record(rec, 'resized', NEW)
    again = boot(agent, uuid, mark)
    assert_guest(again, NEW, first)
    assert again['counter'] == reverted['counter'] + 1

    rec = agent.call('confirm_resize', instance_uuid=uuid)
    assert_record(rec, 'active', NEW)
    assert saved_files(agent, inst) == []
    assert domain_size(uuid) == (NEW['memory_mb'] * 1024, NEW['vcpus'])
    # The next boot of the confirmed guest is on the new flavor again.
    mark = agent.console_mark(uuid)
    assert_record(agent.call('reboot', instance={'uuid': uuid}, reboot_type='HARD'),
                  'active', NEW)
    assert_guest(boot(agent, uuid, mark), NEW, first)

    with pytest.raises(RemoteError) as ei:      # nothing left to confirm
        agent.call('confirm_resize', instance_uuid=uuid)
    assert ei.value.exc_type == 'InstanceInvalidState'


def test_agent_restart_keeps_revert_and_confirm_possible(agent):
    """A restarted agent reads what revert needs from its journal."""
    small = dict(OLD, ephemeral_gb=1)
    inst = agent.make_instance('rszr', metadata={'disk_counter': 'vda'},
                               flavor=small)
    uuid = inst['uuid']
    agent.spawn(inst)
    first = dict(boot(agent, uuid, 0), flavor=small)

    resize(agent, uuid, NEW)
    agent.restart()
    assert_record(agent.get_info(uuid), 'resized', NEW)
    mark = agent.console_mark(uuid)
    assert_record(agent.call('revert_resize', instance_uuid=uuid), 'active', small)
    reverted = boot(agent, uuid, mark)
    assert_guest(reverted, small, first)
    assert reverted['counter'] == first['counter'] + 1

    rec, mark, _ = resize(agent, uuid, NEW)
    assert_guest(boot(agent, uuid, mark), NEW, first)
    agent.kill()                        # no clean stop this time
    agent.start()
    assert_record(agent.get_info(uuid), 'resized', NEW)
    assert_record(agent.call('confirm_resize', instance_uuid=uuid), 'active', NEW)
    assert saved_files(agent, inst) == []

    # destroy of a resized instance takes the saved disks with it
    resize(agent, uuid, dict(NEW, memory_mb=320, root_gb=3))
    assert saved_files(agent, inst) == ['disk' + SAVED]
    assert agent.destroy(inst)['vm_state'] == 'deleted'
    assert not agent.instance_dir(inst).exists()
    lv = open_libvirt()
    try:
        assert no_domain(lv, uuid)
    finally:
        lv.close()
    with pytest.raises(RemoteError) as ei:
        agent.get_info(uuid)
    assert ei.value.exc_type == 'InstanceNotFound'


def last_boot(agent, uuid, since, flavor):
    """The probes of the guest's last boot after console mark ``since``,
    waited for until it is READY with ``flavor``'s vCPUs. An interrupted
    operation boots the guest more than once (the killed attempt, recovery,
    the redelivery); the one that counts is the last."""
    def last():
        out = agent.console(uuid, tail_lines=10000)[since:]
        seg = out.rsplit(BOOT_MARKER, 1)[-1]
        seen = probes(seg)
        return seen if '\nREADY' in seg and seen.get('nproc') == flavor['vcpus'] else None
    return wait_until(last, BOOT_TIMEOUT, 'a boot with %d vCPUs' % flavor['vcpus'],
                      interval=0.5)


def _interrupted(agent, uuid, method, task, **args):
    """Call ``method``; SIGKILL the agent when ``task`` is reported;
    restart it; return the redelivery's reply."""
    since = agent.reports.mark()
    call = InFlight(agent, method, instance_uuid=uuid, **args)
    agent.reports.wait(lambda r: r.get('instance_uuid') == uuid
                       and r.get('task_state') == task, 120, task, since)
    agent.kill()
    restart = agent.reports.mark()
    agent.start()
    reply = call.reply()
    assert [r for r in agent.reports.states(uuid, restart)
            if r['event'] == 'recover'], 'the operation was not interrupted'
    return reply


def test_interrupted_resize_and_revert_complete_on_redelivery(agent):
    """docs: protocol-delivery: a resize killed in its second step is rolled
    back at start and its redelivery resizes again; a killed revert is
    finished at start and its redelivery answers with the outcome."""
    inst = agent.make_instance('rszi', metadata={'disk_counter': 'vda'},
                               flavor=dict(OLD))
    uuid = inst['uuid']
    agent.spawn(inst)
    first = dict(boot(agent, uuid, 0), flavor=OLD)

    mark = agent.console_mark(uuid)
    rec = _interrupted(agent, uuid, 'resize', 'resize_finish', flavor=NEW)
    assert_record(rec, 'resized', NEW)
    assert_record(agent.get_info(uuid), 'resized', NEW)
    assert domain_size(uuid) == (NEW['memory_mb'] * 1024, NEW['vcpus'])
    assert_guest(last_boot(agent, uuid, mark, NEW), NEW, first)

    mark = agent.console_mark(uuid)
    rec = _interrupted(agent, uuid, 'revert_resize', 'resize_reverting')
    assert_record(rec, 'active', OLD)
    assert_guest(last_boot(agent, uuid, mark, OLD), OLD, first)
    assert saved_files(agent, inst) == []
    assert domain_size(uuid) == (OLD['memory_mb'] * 1024, OLD['vcpus'])
