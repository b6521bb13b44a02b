"""The cold migration crash matrix on two real hosts (issue 16, must-show
2-3; docs: protocol-migration-crashes).

SIGKILL of the source agent, of the destination agent or of the
destination's libvirtd in the middle of ``migrate`` (the copy, the
take-over, the source's cleanup) or of ``revert_resize``; then the killed
process starts again. After that there is exactly one running domain across
the two hosts, one owner record (get_info answers on one host,
InstanceNotFound on the other), a last report saying where the guest runs,
the guest's disk marker read by its next boot, and the request's
redelivery gets its outcome without a second migration.

The agents pause at named points while a file exists
(compute_agent/pause_points.py); the test kills a process during the pause.
One guest (the real test guest keeping a boot counter on its root disk,
meta ``disk_counter``) goes through every case: each case first brings it
home to host 1 (``home``), so a case does not depend on how the previous
one ended, only on it having ended settled.
"""


import pytest

from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from tests.functional.agent_messages import new_request_id
    from tests.functional.second_host import (
        close_gate, crash_at_gate, run_two_hosts, running_copies, wait_gate,
        with_pause_points)
    from tests.functional.test_e2e_cold_migration import (
        counter_boot, spawn_counter_guest)
    from tests.functional.test_e2e_migration import _not_found
except ImportError:
    from agent_fixture import (  # noqa: F401
        no_domain, open_libvirt, test_guest, wait_until)
    from agent_messages import new_request_id
    from second_host import (
        close_gate, crash_at_gate, run_two_hosts, running_copies, wait_gate,
        with_pause_points)
    from test_e2e_cold_migration import counter_boot, spawn_counter_guest
    from test_e2e_migration import _not_found

pytestmark = [pytest.mark.libvirt, pytest.mark.rabbit, pytest.mark.slow,
              pytest.mark.timeout(900)]

SETTLE = 180        # seconds for a restarted agent to settle (several rounds)


@pytest.fixture(scope='module')
def hosts(test_guest, tmp_path_factory):
    """Two hosts whose agents have pause points in ``hosts.pauses``."""
    yield from with_pause_points(tmp_path_factory, run_two_hosts, test_guest, 'ccr')


class Guest:
    """The shared guest and the count its next boot prints: ``next`` on
    the owner's disk, ``kept`` on host 1's copy kept for a revert."""

    def __init__(self, inst):
        self.inst, self.uuid = inst, inst['uuid']
        self.where, self.next, self.kept = 'host1', 1, None


@pytest.fixture(scope='module')
def g(hosts):
    inst, _ = spawn_counter_guest(hosts, 'ccm')
    return Guest(inst)


def agent_of(hosts, where):
    return hosts.agent1 if where == 'host1' else hosts.agent2


def home(hosts, g):
    """The guest owned and running on host 1 (a plain revert if not)."""
    if g.where == 'host2':
        out = hosts.agent2.call('revert_resize', instance_uuid=g.uuid,
                                rpc_timeout=300)
        assert out['host'] == hosts.agent1.host, out
        booted(hosts, g, 'host1', g.kept)
    assert hosts.alive(), 'a libvirtd is down before the test'
    assert hosts.agent1.alive() and hosts.agent2.alive()


def booted(hosts, g, where, count):
    """The owner at ``where`` booted the guest from the disk that holds
    ``count`` (the marker survived); the tracked counts move on."""
    counter_boot(agent_of(hosts, where), g.uuid, count)
    if where == 'host2':
        g.kept = g.next if g.where == 'host1' else g.kept
    g.where, g.next = where, count + 1


def at_host2(hosts, g):
    """The guest owned and running on host 2 (migrated there if not)."""
    if g.where != 'host2':      # run alone: migrate it first
        home(hosts, g)
        hosts.agent1.call('migrate', instance_uuid=g.uuid,
                          dest_host=hosts.agent2.host, rpc_timeout=300)
        booted(hosts, g, 'host2', g.next)


def crash_at(hosts, g, point, kill, restart, method='migrate'):
    """``method`` (``migrate`` from host 1, or ``revert_resize`` at host 2)
    paused at ``point``, ``kill()`` during the pause, then ``restart()``;
    returns (request_id, report mark)."""
    a1, a2 = hosts.agent1, hosts.agent2
    if method == 'migrate':
        home(hosts, g)
        agent, args = a1, {'dest_host': a2.host}
    else:
        at_host2(hosts, g)
        agent, args = a2, {}
    gate = close_gate(hosts, point)
    since, rid = a1.reports.mark(), new_request_id()
    agent.cast(method, request_id=rid, instance_uuid=g.uuid, **args)
    wait_gate(gate, 300, f'{method} paused at {point}')
    crash_at_gate(hosts, gate, kill, restart)
    return rid, since


def last_report(hosts, g, event, since):
    return hosts.agent1.reports.wait(
        lambda r: r.get('instance_uuid') == g.uuid and r.get('event') == event,
        SETTLE, event, since)


def ended_at(hosts, g, event, since, where, vm_state):
    """``event`` reports the guest ``vm_state`` at ``where``, which then
    owns and runs it alone."""
    rep = last_report(hosts, g, event, since)
    assert (rep['host'], rep['vm_state']) == (
        agent_of(hosts, where).host, vm_state), rep
    assert_one_owner(hosts, g, where, vm_state)


def assert_one_owner(hosts, g, where, vm_state):
    owner = agent_of(hosts, where)
    other = hosts.agent2 if owner is hosts.agent1 else hosts.agent1
    wait_until(lambda: _not_found(other, g.uuid), SETTLE,
               f'the other host to let go of {g.uuid}')
    info = owner.get_info(g.uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state']) == (owner.host, vm_state, None, 1), info
    wait_until(lambda: running_copies(hosts, g.uuid) == [where], 60,
               f'one running domain, on {where}')


def assert_stayed_home(hosts, g, rid, since):
    """Settled before the decision: the guest runs on host 1 again, host 2
    keeps nothing, the redelivery gets the error and moves nothing."""
    a1, a2 = hosts.agent1, hosts.agent2
    ended_at(hosts, g, 'migrate.error', since, 'host1', 'active')
    assert_host2_let_go(hosts, g)
    booted(hosts, g, 'host1', g.next)
    mark = a1.reports.mark()
    with pytest.raises(RemoteError) as ei:
        a1.call('migrate', request_id=rid, instance_uuid=g.uuid,
                dest_host=a2.host)
    assert ei.value.exc_type == 'MigrationError', ei.value
    assert not [r for r in a1.reports.states(g.uuid, mark)
                if r['event'] == 'migrate.start']
    assert running_copies(hosts, g.uuid) == ['host1']


def assert_reverted(hosts, g, rid, since):
    """Settled as a revert: host 1 runs and owns it (``active``), said by
    its ``revert_resize.end``; host 2 keeps nothing; the redelivery gets the
    outcome (host 1's record) and moves nothing."""
    a1, a2 = hosts.agent1, hosts.agent2
    ended_at(hosts, g, 'revert_resize.end', since, 'host1', 'active')
    assert_host2_let_go(hosts, g)
    booted(hosts, g, 'host1', g.kept)
    again = a2.call('revert_resize', request_id=rid, instance_uuid=g.uuid)
    assert again['host'] == a1.host, again
    assert running_copies(hosts, g.uuid) == ['host1']


def assert_host2_let_go(hosts, g):
    """Host 2 removes its domain and its files of the guest."""
    lv2 = hosts.second.open()
    try:
        wait_until(lambda: no_domain(lv2, g.uuid), SETTLE,
                   'host 2 to drop its copy')
    finally:
        lv2.close()
    wait_until(lambda: not hosts.agent2.instance_dir(g.inst).exists(), SETTLE,
               'host 2 to remove its files')


def assert_moved(hosts, g, rid, since):
    """Settled after the decision: host 2 runs and owns it (``resized``),
    said by its ``migrate.end``; host 1 keeps only its files; the
    redelivery gets the outcome and moves nothing."""
    a1, a2 = hosts.agent1, hosts.agent2
    ended_at(hosts, g, 'migrate.end', since, 'host2', 'resized')
    assert no_domain_on_host1(g.uuid)
    assert a1.instance_dir(g.inst).exists()     # kept for a revert
    booted(hosts, g, 'host2', g.next)
    mark = a1.reports.mark()
    again = a1.call('migrate', request_id=rid, instance_uuid=g.uuid,
                    dest_host=a2.host)
    assert (again['host'], again['vm_state']) == (a2.host, 'resized'), again
    assert not [r for r in a1.reports.states(g.uuid, mark)
                if r['event'].startswith('migrate')]
    assert running_copies(hosts, g.uuid) == ['host2']


def no_domain_on_host1(uuid):
    lv = open_libvirt()
    try:
        return no_domain(lv, uuid)
    finally:
        lv.close()


# -- before the decision: the guest stays on host 1 ------------------------------

def test_source_agent_killed_during_the_copy(hosts, g):
    a1 = hosts.agent1
    rid, since = crash_at(hosts, g, 'cold-dest-copied', a1.kill, a1.start)
    assert_stayed_home(hosts, g, rid, since)


def test_destination_agent_killed_during_the_copy(hosts, g):
    """Either way is right, as long as it is one: the source gave up
    waiting (the guest stays on host 1), or the restarted destination got
    the receive again while the source still exported and answered it (the
    migration goes on to host 2)."""
    a2 = hosts.agent2
    rid, since = crash_at(hosts, g, 'cold-dest-copied', a2.kill, a2.start)
    end = hosts.agent1.reports.wait(
        lambda r: r.get('instance_uuid') == g.uuid and r.get('event') in (
            'migrate.error', 'migrate.end'), SETTLE, 'the migration ended',
        since)
    if end['event'] == 'migrate.error':
        assert_stayed_home(hosts, g, rid, since)
    else:
        assert_moved(hosts, g, rid, since)


# -- after the decision: the guest moves to host 2 ---------------------------------

def test_source_agent_killed_after_the_decision(hosts, g):
    a1 = hosts.agent1
    rid, since = crash_at(hosts, g, 'cold-source-take-over', a1.kill, a1.start)
    assert_moved(hosts, g, rid, since)


def test_destination_agent_killed_during_the_revert(hosts, g):
    """revert_resize at host 2, killed after host 1 restored the guest and
    before host 2 removed its copy: host 2 removes it when back."""
    a2 = hosts.agent2
    rid, since = crash_at(hosts, g, 'cold-revert-restored', a2.kill, a2.start,
                          method='revert_resize')
    assert_reverted(hosts, g, rid, since)


def test_source_agent_killed_at_cleanup(hosts, g):
    a1 = hosts.agent1
    rid, since = crash_at(hosts, g, 'cold-source-cleanup', a1.kill, a1.start)
    assert_moved(hosts, g, rid, since)


def test_source_agent_killed_during_the_restore(hosts, g):
    """revert_resize at host 2, host 1's agent killed while it restores the
    guest: host 2 keeps asking until host 1 is back and owns it."""
    a1 = hosts.agent1
    rid, since = crash_at(hosts, g, 'cold-source-restore', a1.kill, a1.start,
                          method='revert_resize')
    assert_reverted(hosts, g, rid, since)


def test_destination_agent_killed_at_take_over(hosts, g):
    a2 = hosts.agent2
    rid, since = crash_at(hosts, g, 'cold-dest-take-over', a2.kill, a2.start)
    assert_moved(hosts, g, rid, since)


def test_destination_libvirtd_killed_at_take_over(hosts, g):
    second = hosts.second
    rid, since = crash_at(hosts, g, 'cold-dest-take-over',
                          second.kill_libvirtd, second.restart_libvirtd)
    assert_moved(hosts, g, rid, since)
