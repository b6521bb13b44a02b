"""Cold migration (``migrate``) between two real hosts on this machine
(issue 16, must-show 2; docs: protocol-method-migrate).

Host 1 is the machine's libvirtd with a real agent, host 2 a second
libvirtd in its own namespaces with its own agent (second_host.py). The
guest is the real test guest (TCG) keeping a boot counter on its root disk
(meta ``disk_counter``): every boot prints the count it found and writes
the next one, so the count a boot shows says which disk it booted from
(the marker written before the migration is read after it, both ways).
Its MEMTOTAL-KB line shows the flavor's memory.
"""

import pytest
import libvirt

from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import new_request_id
    from tests.functional.second_host import run_two_hosts
    from tests.functional.test_e2e_resize import probes
except ImportError:
    from agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from agent_messages import new_request_id
    from second_host import run_two_hosts
    from test_e2e_resize import probes

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(900)]

GiB = 1 << 30
OLD = {'memory_mb': 128, 'vcpus': 1, 'root_gb': 1, 'ephemeral_gb': 0, 'swap': 0}
NEW = {'memory_mb': 256, 'vcpus': 1, 'root_gb': 2, 'ephemeral_gb': 0, 'swap': 0}
BOOT_TIMEOUT = 180


@pytest.fixture(scope='module')
def hosts(test_guest):
    yield from run_two_hosts(test_guest, 'cmg')


def counter_boot(agent, uuid, n):
    """The probes of the boot that found counter ``n`` on its root disk
    (printed after MEMTOTAL-KB and DISK-SIZE; the boot is done at READY,
    its next count written by then)."""
    text = 'DISK-COUNTER vda %d\n' % n

    def booted():
        out = agent.console(uuid, 10000)
        i = out.rfind(text)
        if i < 0 or '\nREADY' not in out[i:]:
            return None
        return out[out.rfind('MEMTOTAL-KB', 0, i):i + len(text)]
    return probes(wait_until(booted, BOOT_TIMEOUT, f'{text!r} on {uuid}',
                             interval=1))


def domain_on(lv_open, uuid):
    lv = lv_open()
    try:
        return lv.lookupByUUIDString(uuid).isActive() == 1
    except libvirt.libvirtError:
        return None
    finally:
        lv.close()


def not_found(agent, uuid):
    with pytest.raises(RemoteError) as ei:
        agent.get_info(uuid)
    assert ei.value.exc_type == 'InstanceNotFound'


def spawn_counter_guest(hosts, label):
    """The test guest keeping a boot counter on its root disk, active on
    host 1 (either host's agent removes it at teardown); returns (instance,
    its first boot's counter line)."""
    a1 = hosts.agent1
    inst = a1.make_instance(label, metadata={'disk_counter': 'vda'},
                            flavor=dict(OLD))
    hosts.agent2.instances[inst['uuid']] = inst     # its teardown too
    _, rec = a1.spawn(inst)
    assert rec['vm_state'] == 'active', rec
    return inst, counter_boot(a1, inst['uuid'], 0)


@pytest.fixture(scope='module')
def guest(hosts):
    return spawn_counter_guest(hosts, 'cm')


def migrate(hosts, uuid):
    a1, a2 = hosts.agent1, hosts.agent2
    since = a1.reports.mark()
    rid = new_request_id()
    out = a1.call('migrate', request_id=rid, instance_uuid=uuid,
                  dest_host=a2.host, flavor=NEW, rpc_timeout=300)
    assert (out['host'], out['vm_state'], out['task_state'],
            out['power_state'], out['flavor']) == (
        a2.host, 'resized', None, 1, NEW), out
    events = [(r['event'], r['host'], r['vm_state'], r['task_state'])
              for r in a1.reports.states(uuid, since)]
    assert events == [('migrate.start', a1.host, 'active', 'resize_migrating'),
                      ('migrate.end', a2.host, 'resized', None)], events
    not_found(a1, uuid)
    assert domain_on(open_libvirt, uuid) is None
    assert domain_on(hosts.second.open, uuid) is True
    # Its redelivery answers the outcome and moves nothing.
    again = a1.call('migrate', request_id=rid, instance_uuid=uuid,
                    dest_host=a2.host, flavor=NEW)
    assert again['host'] == a2.host
    return out


def test_refusals_change_nothing(hosts, guest):
    inst, _ = guest
    a1, uuid = hosts.agent1, inst['uuid']
    with pytest.raises(RemoteError) as ei:
        a1.call('migrate', instance_uuid=uuid, dest_host=hosts.agent2.host,
                flavor=dict(NEW, root_gb=0))
    assert ei.value.exc_type == 'InvalidRequest'
    assert 'flavor.root_gb' in ei.value.value
    with pytest.raises(RemoteError) as ei:
        a1.call('migrate', instance_uuid=uuid, dest_host='no-such-host-cm')
    assert ei.value.exc_type == 'MigrationPreCheckError'
    info = a1.get_info(uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state'], info['flavor']) == (
        a1.host, 'active', None, 1, OLD), info
    not_found(hosts.agent2, uuid)


def test_migrate_revert_then_migrate_confirm(hosts, guest):
    inst, first = guest
    a1, a2, uuid = hosts.agent1, hosts.agent2, inst['uuid']
    src_dir = a1.instance_dir(inst)

    # 1. To host 2 on NEW: the disk's counter (1, written by the first
    # boot) came along, memory and root disk are NEW's.
    migrate(hosts, uuid)
    there = counter_boot(a2, uuid, 1)
    assert there['disks']['vda'] == NEW['root_gb'] * GiB, there
    assert there['mem_kb'] > first['mem_kb'] + 128 * 1024 * 3 // 4, there
    assert src_dir.exists()         # the source's copy, for a revert

    # 2. revert_resize at host 2: host 1 owns and runs the old guest on its
    # own disk (it finds 1, not the 2 host 2's boot wrote), host 2 keeps
    # nothing.
    since = a1.reports.mark()
    out = a2.call('revert_resize', instance_uuid=uuid, rpc_timeout=300)
    assert (out['host'], out['vm_state'], out['task_state'],
            out['power_state'], out['flavor']) == (a1.host, 'active', None,
                                                   1, OLD), out
    end = [r for r in a1.reports.states(uuid, since)
           if r['event'] == 'revert_resize.end']
    assert end and end[-1]['host'] == a1.host
    not_found(a2, uuid)
    assert domain_on(hosts.second.open, uuid) is None
    assert not a2.instance_dir(inst).exists()
    back = counter_boot(a1, uuid, 1)
    assert back['mem_kb'] == first['mem_kb'], back
    assert back['disks']['vda'] == OLD['root_gb'] * GiB, back
    assert a1.get_info(uuid)['host'] == a1.host

    # 3. Again, then confirm_resize: host 1's copy goes, host 2 owns it
    # (its disk now shows the count host 1's revert boot wrote: 2).
    migrate(hosts, uuid)
    again = counter_boot(a2, uuid, 2)
    assert again['mem_kb'] > first['mem_kb'] + 128 * 1024 * 3 // 4, again
    out = a2.call('confirm_resize', instance_uuid=uuid, rpc_timeout=120)
    assert (out['host'], out['vm_state'], out['task_state'],
            out['power_state'], out['flavor']) == (a2.host, 'active', None,
                                                   1, NEW), out
    assert not src_dir.exists()
    not_found(a1, uuid)
    assert domain_on(hosts.second.open, uuid) is True

    # 4. Back the other way (host 2 exports, host 1 copies), same flavor:
    # the disk shows host 2's last count (3); destroy of the resized
    # instance at host 1 drops host 2's kept copy too.
    out = a2.call('migrate', instance_uuid=uuid, dest_host=a1.host,
                  rpc_timeout=300)
    assert (out['host'], out['vm_state'], out['flavor']) == (
        a1.host, 'resized', NEW), out
    home = counter_boot(a1, uuid, 3)
    assert home['disks']['vda'] == NEW['root_gb'] * GiB, home
    not_found(a2, uuid)
    assert a2.instance_dir(inst).exists()
    a1.destroy(inst)
    assert not a2.instance_dir(inst).exists()
    assert not src_dir.exists()
