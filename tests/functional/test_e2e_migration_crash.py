"""The live migration crash matrix on two real hosts (issue 16, must-show 3).

SIGKILL of the source agent, of the destination agent and of the
destination's libvirtd, at the switch-over (the destination's take-over)
and at the source's cleanup; then the killed process starts again. After
that there is exactly one running domain across the two hosts, one owner
record (get_info answers there, InstanceNotFound on the other host), a
final report saying where the guest runs, and the request's redelivery
gets its outcome without a second migration.

Both steps last milliseconds, so the agents pause there while a file
exists (compute_agent/pause_points.py, enabled by the environment these
tests give the agents); the test kills a process during the pause.
"""


import libvirt
import pytest

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import new_request_id
    from tests.functional.second_host import (
        close_gate, crash_at_gate, run_two_hosts, running_copies, wait_gate,
        with_pause_points)
    from tests.functional.test_e2e_migration import (
        _not_found, assert_left_nothing_on_source, last_heartbeat, spawn_guest)
except ImportError:
    from agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from agent_messages import new_request_id
    from second_host import (
        close_gate, crash_at_gate, run_two_hosts, running_copies, wait_gate,
        with_pause_points)
    from test_e2e_migration import (
        _not_found, assert_left_nothing_on_source, last_heartbeat, spawn_guest)


@pytest.fixture(scope='module')
def hosts(test_guest, tmp_path_factory):
    """Two hosts whose agents have pause points in ``hosts.pauses``."""
    yield from with_pause_points(tmp_path_factory, run_two_hosts, test_guest, 'mcr')


def migrate_until(hosts, label, point):
    """A guest on host 1 migrating to host 2, paused at ``point``."""
    a1, dest = hosts.agent1, hosts.agent2
    assert hosts.alive(), 'a libvirtd is down before the test'
    inst, vif = spawn_guest(hosts, label)
    dest.instances[inst['uuid']] = inst     # the destination's teardown removes it
    before = last_heartbeat(a1, inst['uuid'])
    gate = close_gate(hosts, point)
    since, rid = a1.reports.mark(), new_request_id()
    a1.cast('live_migrate', request_id=rid, instance_uuid=inst['uuid'],
            dest_host=dest.host, block_migration=True)
    wait_gate(gate, 180, f'the migration paused at {point}')
    return inst, vif, since, rid, gate, before


def assert_settled_at_destination(hosts, inst, vif, since, rid, before):
    """One running copy (host 2), one owner (its agent), the final report
    from there, and the redelivered request's outcome."""
    a1, dest = hosts.agent1, hosts.agent2
    uuid = inst['uuid']
    end = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                          and r.get('event') == 'live_migrate.end', 180,
                          'live_migrate.end', since)
    assert end['host'] == dest.host and end['vm_state'] == 'active', end
    wait_until(lambda: _not_found(a1, uuid), 120, 'the source to let go')
    # A power sync that ran while host 2's libvirtd was down reported
    # power.unknown (0); the next one that reaches libvirt corrects it.
    wait_until(lambda: dest.get_info(uuid)['power_state'] != 0, 30,
               'the destination to ask its libvirtd again')
    info = dest.get_info(uuid)
    assert (info['host'], info['task_state'], info['power_state']) == (
        dest.host, None, 1), info
    assert running_copies(hosts, uuid) == ['host2']
    assert_left_nothing_on_source(hosts, inst, vif)
    later = [r for r in a1.reports.states(uuid, since)
             if r['sequence'] >= end['sequence']]
    assert all(r['host'] == dest.host for r in later), later
    # The guest never restarted: its counter goes on over there.
    wait_until(lambda: last_heartbeat(dest, uuid) > before, 60,
               f'a HEARTBEAT above {before} at the destination', interval=1)
    again = a1.call('live_migrate', request_id=rid, instance_uuid=uuid,
                    dest_host=dest.host, block_migration=True)
    assert again['host'] == dest.host, again
    dest.destroy(inst)


def crash(hosts, label, point, kill, restart):
    inst, vif, since, rid, gate, before = migrate_until(hosts, label, point)
    crash_at_gate(hosts, gate, kill, restart)
    assert_settled_at_destination(hosts, inst, vif, since, rid, before)


def test_source_agent_killed_at_take_over(hosts):
    a1 = hosts.agent1
    crash(hosts, 'sto', 'source-take-over', a1.kill, a1.start)


def test_source_agent_killed_at_cleanup(hosts):
    a1 = hosts.agent1
    crash(hosts, 'scl', 'source-cleanup', a1.kill, a1.start)


def test_destination_agent_killed_at_take_over(hosts):
    dest = hosts.agent2
    crash(hosts, 'dto', 'dest-take-over', dest.kill, dest.start)


def test_destination_agent_killed_at_cleanup(hosts):
    dest = hosts.agent2
    crash(hosts, 'dcl', 'source-cleanup', dest.kill, dest.start)


def test_destination_libvirtd_killed_at_take_over(hosts):
    second = hosts.second
    crash(hosts, 'lto', 'source-take-over', second.kill_libvirtd,
          second.restart_libvirtd)


def test_destination_libvirtd_killed_at_cleanup(hosts):
    second = hosts.second
    crash(hosts, 'lcl', 'source-cleanup', second.kill_libvirtd,
          second.restart_libvirtd)


def test_destination_libvirtd_killed_during_the_copy(hosts):
    """SIGKILL of host 2's libvirtd while libvirt copies, then its restart:
    the copy fails, the guest stays on host 1 (its ``.error`` says so), and
    host 2's agent removes what it had prepared (it asks host 1's agent)."""
    a1, dest, second = hosts.agent1, hosts.agent2, hosts.second
    assert hosts.alive()
    inst, vif = spawn_guest(hosts, 'lcp')
    uuid = inst['uuid']
    before = last_heartbeat(a1, uuid)
    lv = open_libvirt()
    try:
        dom = lv.lookupByUUIDString(uuid)
        dom.migrateSetMaxSpeed(1, 0)
        since = a1.reports.mark()
        a1.cast('live_migrate', instance_uuid=uuid, dest_host=dest.host,
                block_migration=True)
        wait_until(lambda: dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE, 60,
                   'the migration job on the source', interval=0.05)
        second.kill_libvirtd()
    finally:
        lv.close()
    # The copy is QEMU to QEMU: it goes on without host 2's libvirtd (it
    # fails only when the restarted libvirtd drops the unfinished incoming
    # guest).
    second.restart_libvirtd()
    err = a1.reports.wait(lambda r: r.get('instance_uuid') == uuid
                          and r.get('event') == 'live_migrate.error', 120,
                          'live_migrate.error', since)
    assert err['host'] == a1.host and err['vm_state'] == 'active', err
    info = a1.get_info(uuid)
    assert (info['host'], info['task_state'], info['power_state']) == (
        a1.host, None, 1), info
    lv2 = second.open()
    try:
        wait_until(lambda: no_domain(lv2, uuid), 120,
                   'host 2 to drop what it prepared')
    finally:
        lv2.close()
    wait_until(lambda: not dest.instance_dir(inst).exists(), 60,
               'host 2 to remove the instance directory')
    assert running_copies(hosts, uuid) == ['host1']
    assert _not_found(dest, uuid)
    wait_until(lambda: last_heartbeat(a1, uuid) > before, 60,
               'the guest still beating on host 1', interval=1)
    a1.destroy(inst)
