"""Live migration crashes that need both hosts in namespaces (issue 16,
must-show 3 and 4): SIGKILL of the SOURCE libvirtd (during the copy, at the
switch-over, at cleanup), agent kills during the pre-check, and a guest
that neither host runs after a crash (docs: protocol-migration-crashes).

The machine's libvirtd is shared with other tests and never killed, so
here both hosts are second_host.SecondHosts, each with its libvirtd and one
agent (``run_two_namespace_hosts``). One test guest is shared: each case
migrates it from wherever it runs to the other host (the hosts are alike)
and leaves it running, except the last, which ends it; a guest found
running nowhere is replaced. Steps that last milliseconds are held with
pause points (compute_agent/pause_points.py) while the test kills a process.
"""

import os
import signal
import subprocess
import threading
from pathlib import Path

import libvirt
import pytest

from compute_agent.netfilter import nwfilter
from compute_agent.rpc.client import RemoteError

try:
    from tests.functional.agent_fixture import (  # noqa: F401
        no_domain, test_guest, wait_until)
    from tests.functional.agent_messages import new_request_id
    from tests.functional.second_host import (
        close_gate, crash_at_gate, open_gate, run_two_namespace_hosts, running_copies,
        wait_gate, with_pause_points)
    from tests.functional.test_e2e_migration import (
        BOOTED, _not_found, last_heartbeat, spawn_guest)
except ImportError:
    from agent_fixture import (  # noqa: F401
        no_domain, test_guest, wait_until)
    from agent_messages import new_request_id
    from second_host import (
        close_gate, crash_at_gate, open_gate, run_two_namespace_hosts, running_copies,
        wait_gate, with_pause_points)
    from test_e2e_migration import BOOTED, _not_found, last_heartbeat, spawn_guest

# Short libvirt connection retries (~9 s): a libvirtd down longer than
# that makes an operation fail (test_source_libvirtd_down_past_the_cleanup).
FAST = {'libvirt': {'live_migration_peer_timeout': 5,
                    'live_migration_settle_interval': 2,
                    'connect_retries': 6, 'connect_retry_interval': 0.3}}
SETTLED = 120       # seconds for a settlement after a restart


@pytest.fixture(scope='module')
def hosts(test_guest, tmp_path_factory):
    """Two hosts whose agents have pause points in ``hosts.pauses``."""
    yield from with_pause_points(tmp_path_factory, run_two_namespace_hosts, test_guest, 'mhk', FAST)


class Guest:
    """The module's guest and the host it runs on."""

    def __init__(self, hosts):
        self.hosts = hosts
        self.inst = self.vif = None

    @property
    def uuid(self):
        return self.inst['uuid']

    def ready(self):
        """(source, dest): the (agent, SecondHost) pairs where it runs and
        the other; a new guest on host 1 if it runs nowhere."""
        assert self.hosts.alive(), 'a libvirtd is down before the test'
        if self.inst is not None:
            where = running_copies(self.hosts, self.uuid)
            if len(where) == 1:
                src = self.hosts.pair(where[0])
                return src, self.other(src)
            for agent, _ in self.hosts.hosts:
                agent.instances.pop(self.uuid, None)
        self.inst, self.vif = spawn_guest(self.hosts, 'hk')
        for agent, _ in self.hosts.hosts:     # whichever owns it at teardown
            agent.instances[self.uuid] = self.inst
        return self.hosts.hosts[0], self.hosts.hosts[1]

    def other(self, pair):
        return [p for p in self.hosts.hosts if p is not pair][0]


@pytest.fixture(scope='module')
def guest(hosts):
    return Guest(hosts)


# -- helpers ------------------------------------------------------------------------

def leftovers(pair, inst, vif):
    """What ``pair`` still has of ``inst``: record, domain, filter, tap,
    directory."""
    agent, host = pair
    uuid = inst['uuid']
    found = [] if _not_found(agent, uuid) else ['record']
    conn = host.open()
    try:
        if not no_domain(conn, uuid):
            found.append('domain')
        try:
            conn.nwfilterLookupByName(nwfilter.filter_name(vif))
            found.append('filter')
        except libvirt.libvirtError:
            pass
    finally:
        conn.close()
    tap = subprocess.run(['ip', 'netns', 'exec', host.netns, 'ip', 'link',
                          'show', vif['devname']], capture_output=True)
    if tap.returncode == 0:
        found.append('tap')
    if agent.instance_dir(inst).exists():
        found.append('directory')
    return found


def no_domain_at(pair, uuid):
    """``pair``'s libvirt has no domain of ``uuid``."""
    conn = pair[1].open()
    try:
        return no_domain(conn, uuid)
    finally:
        conn.close()


def left_nothing(pair, inst, vif, timeout=30):
    """Nothing of ``inst`` on ``pair`` (the agent may still be retrying)."""
    wait_until(lambda: not leftovers(pair, inst, vif), timeout,
               f'nothing left on {pair[0].host}')


def wait_report(agent, uuid, event, since):
    return agent.reports.wait(lambda r: r.get('instance_uuid') == uuid
                              and r.get('event') == event, SETTLED, event,
                              since)


def assert_runs_only_on(hosts, g, pair, before, since):
    """One running copy (``pair``'s), one owner record (its agent's, the
    other says InstanceNotFound), the guest never restarted."""
    agent, _ = pair
    other = g.other(pair)
    assert running_copies(hosts, g.uuid) == [hosts.name(pair)]
    info = agent.get_info(g.uuid)
    assert (info['host'], info['task_state'], info['power_state']) == (
        agent.host, None, 1), info
    wait_until(lambda: _not_found(other[0], g.uuid), 60,
               'the other host to hold no record')
    later = [r for r in agent.reports.states(g.uuid, since)]
    assert later and later[-1]['host'] == agent.host, later
    wait_until(lambda: last_heartbeat(agent, g.uuid) > before, 60,
               f'a HEARTBEAT above {before} on {agent.host}', interval=1)
    # One boot only: the console the owner has shows none after the first.
    assert agent.console(g.uuid, 10000).count(BOOTED) <= 1


def moved(hosts, g, src, dest, since, rid, before):
    """Settled at ``dest``: its end report, nothing left on ``src``, the
    redelivery's outcome without a second migration."""
    end = wait_report(src[0], g.uuid, 'live_migrate.end', since)
    assert end['host'] == dest[0].host and end['vm_state'] == 'active', end
    wait_until(lambda: _not_found(src[0], g.uuid), SETTLED,
               'the source to let go')
    assert_runs_only_on(hosts, g, dest, before, since)
    left_nothing(src, g.inst, g.vif)
    again = src[0].call('live_migrate', request_id=rid, instance_uuid=g.uuid,
                        dest_host=dest[0].host, block_migration=True)
    assert again['host'] == dest[0].host, again
    assert running_copies(hosts, g.uuid) == [hosts.name(dest)]


def stayed(hosts, g, src, dest, since, before):
    """Settled at ``src``: its error report, nothing at ``dest``."""
    err = wait_report(src[0], g.uuid, 'live_migrate.error', since)
    assert err['host'] == src[0].host and err['vm_state'] == 'active', err
    assert_runs_only_on(hosts, g, src, before, since)
    wait_until(lambda: not dest[0].instance_dir(g.inst).exists(), 60,
               'the destination to remove what it prepared')
    assert no_domain_at(dest, g.uuid)
    return err


def settled(hosts, g, src, dest, since, rid, before, what):
    """The request's one outcome: ``live_migrate.end`` (then it runs only
    at ``dest``, see ``moved``) or ``.error`` (only at ``src``, see
    ``stayed``); returns that report."""
    done = src[0].reports.wait(
        lambda r: r.get('instance_uuid') == g.uuid and r.get('event') in (
            'live_migrate.end', 'live_migrate.error'), SETTLED, what, since)
    if done['event'] == 'live_migrate.end':
        moved(hosts, g, src, dest, since, rid, before)
    else:
        stayed(hosts, g, src, dest, since, before)
    print(f'settled with {done["event"]} from {done["host"]}')
    return done


def start_copy(g, src, dest):
    """Cast live_migrate of the guest from ``src`` to ``dest``, its copy
    throttled to 1 MiB/s, until libvirt's job runs; returns the report
    mark."""
    conn = src[1].open()
    try:
        dom = conn.lookupByUUIDString(g.uuid)
        dom.migrateSetMaxSpeed(1, 0)
        since = src[0].reports.mark()
        src[0].cast('live_migrate', instance_uuid=g.uuid,
                    dest_host=dest[0].host, block_migration=True)
        wait_until(lambda: dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE,
                   60, 'the migration job on the source', interval=0.05)
    finally:
        conn.close()
    return since


def start_migration(hosts, g, point):
    """Cast live_migrate of the guest to the other host, paused at
    ``point``; returns (src, dest, since, rid, before, gate)."""
    src, dest = g.ready()
    before = last_heartbeat(src[0], g.uuid)
    gt = close_gate(hosts, point)
    since, rid = src[0].reports.mark(), new_request_id()
    src[0].cast('live_migrate', request_id=rid, instance_uuid=g.uuid,
                dest_host=dest[0].host, block_migration=True)
    try:
        wait_gate(gt, 120, f'the migration paused at {point}')
    except BaseException:
        open_gate(gt)
        raise
    return src, dest, since, rid, before, gt


# -- the source's libvirtd killed ---------------------------------------------------

def test_source_libvirtd_killed_during_the_copy(hosts, guest):
    """libvirt's copy dies with the source libvirtd (the destination's
    libvirtd drops the incoming guest when its peer's connection goes):
    the guest runs on at the source, whose agent reports the error once its
    libvirtd is back; the destination removes what it prepared."""
    src, dest = guest.ready()
    before = last_heartbeat(src[0], guest.uuid)
    since = start_copy(guest, src, dest)
    src[1].kill_libvirtd()
    src[1].restart_libvirtd()
    stayed(hosts, guest, src, dest, since, before)
    unthrottle(src[1], guest.uuid)


@pytest.mark.parametrize('point', ['source-take-over', 'source-cleanup'])
def test_source_libvirtd_killed(hosts, guest, point):
    """At the switch-over (the guest runs at the destination, which has not
    taken it over yet) and at the source's cleanup."""
    src, dest, since, rid, before, gt = start_migration(hosts, guest, point)
    crash_at_gate(hosts, gt, src[1].kill_libvirtd, src[1].restart_libvirtd)
    moved(hosts, guest, src, dest, since, rid, before)


def test_source_libvirtd_down_past_the_cleanup(hosts, guest):
    """The source's libvirtd stays down longer than its agent's connection
    retries while it cleans up: the destination owns the guest, the
    source's record goes, and what the failed cleanup left (domain, filter,
    directory) is removed once libvirtd is back."""
    src, dest, since, rid, before, gt = start_migration(hosts, guest,
                                                        'source-cleanup')
    try:
        src[1].kill_libvirtd()
    finally:
        open_gate(gt)
    # The cleanup gave up (record gone) while libvirtd was still down.
    wait_until(lambda: _not_found(src[0], guest.uuid), 60,
               'the source to let go without its libvirtd')
    src[1].restart_libvirtd()
    moved(hosts, guest, src, dest, since, rid, before)


# -- agents killed during the pre-check ---------------------------------------------

def test_destination_agent_killed_in_the_pre_check(hosts, guest):
    """The source answers MigrationPreCheckError (the peer timeout, within
    the call's); the guest runs on there untouched, the destination holds
    nothing, also after its agent is back."""
    src, dest = guest.ready()
    before = last_heartbeat(src[0], guest.uuid)
    devices = src[0].get_info(guest.uuid)['devices']
    gt = close_gate(hosts, 'dest-check')
    since = src[0].reports.mark()
    answer = {}

    def call():
        try:
            answer['out'] = src[0].call('live_migrate', instance_uuid=guest.uuid,
                                        dest_host=dest[0].host,
                                        block_migration=True)
        except RemoteError as exc:
            answer['err'] = exc
    caller = threading.Thread(target=call)
    caller.start()
    try:
        wait_gate(gt, 120, 'the destination paused in its pre-check')
        dest[0].kill()
    finally:
        open_gate(gt)
        caller.join(90)
    assert not caller.is_alive(), 'no answer'
    assert answer.get('err') is not None, answer
    assert answer['err'].exc_type == 'MigrationPreCheckError', answer['err']
    err = wait_report(src[0], guest.uuid, 'live_migrate.error', since)
    assert err['error']['class'] == 'MigrationPreCheckError'
    dest[0].start()
    info = src[0].get_info(guest.uuid)
    assert (info['vm_state'], info['task_state'], info['power_state'],
            info['host']) == ('active', None, 1, src[0].host)
    assert info['devices'] == devices
    assert_runs_only_on(hosts, guest, src, before, since)
    assert no_domain_at(dest, guest.uuid)
    assert not dest[0].instance_dir(guest.inst).exists()


def test_source_agent_killed_waiting_on_its_pre_check(hosts, guest):
    """The restarted source settles the request once: either its
    redelivery migrates the guest (``.end`` from the destination) or the
    settlement at start ends it where it runs (``.error``); a later
    redelivery returns that outcome and moves nothing."""
    src, dest, since, rid, before, gt = start_migration(hosts, guest,
                                                        'dest-check')
    crash_at_gate(hosts, gt, src[0].kill, src[0].start)
    done = settled(hosts, guest, src, dest, since, rid, before,
                   'the outcome after the restart')
    if done['event'] == 'live_migrate.error':
        with pytest.raises(RemoteError) as ei:
            src[0].call('live_migrate', request_id=rid,
                        instance_uuid=guest.uuid, dest_host=dest[0].host,
                        block_migration=True)
        assert ei.value.exc_type == 'MigrationError', ei.value
        assert running_copies(hosts, guest.uuid) == [hosts.name(src)]


@pytest.mark.parametrize('which', ['source', 'destination'])
def test_libvirtd_killed_during_the_pre_check(hosts, guest, which):
    """Either host's libvirtd killed while the destination checks: the
    request ends once, with one running copy and one owner (a pre-check
    that could not ask libvirt refuses; one that reconnected migrates)."""
    src, dest, since, rid, before, gt = start_migration(hosts, guest,
                                                        'dest-check')
    host = src[1] if which == 'source' else dest[1]
    try:
        host.kill_libvirtd()
        host.restart_libvirtd()
    finally:
        open_gate(gt)
    assert hosts.alive()
    done = settled(hosts, guest, src, dest, since, rid, before, 'the outcome')
    if done['event'] == 'live_migrate.error':
        assert done['error']['class'] in (
            'MigrationPreCheckError', 'MigrationError'), done


# -- neither host runs it -----------------------------------------------------------

def qemu_of(host, uuid):
    """The pid of the QEMU running ``uuid`` in ``host``'s namespace."""
    ns = os.stat(f'/run/netns/{host.netns}').st_ino
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            argv = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
            if (uuid.encode() in argv and b'qemu' in argv[0]
                    and os.stat(f'/proc/{pid}/ns/net').st_ino == ns):
                found.append(int(pid))
        except OSError:
            pass
    assert len(found) == 1, found
    return found[0]


def test_source_qemu_killed_during_the_copy(hosts, guest):
    """The guest dies at the source while libvirt copies it: neither host
    runs it and it never ran at the destination, so the source keeps the
    record and its disks, stopped (one ``.error``); the destination holds
    nothing; ``power_on`` there starts it again from those disks."""
    src, dest = guest.ready()
    since = start_copy(guest, src, dest)
    os.kill(qemu_of(src[1], guest.uuid), signal.SIGKILL)
    err = wait_report(src[0], guest.uuid, 'live_migrate.error', since)
    assert (err['host'], err['vm_state'], err['power_state']) == (
        src[0].host, 'stopped', 4), err
    info = src[0].get_info(guest.uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state']) == (src[0].host, 'stopped', None, 4), info
    assert running_copies(hosts, guest.uuid) == []
    assert _not_found(dest[0], guest.uuid)
    wait_until(lambda: not dest[0].instance_dir(guest.inst).exists(), 60,
               'the destination to remove what it prepared')
    assert no_domain_at(dest, guest.uuid)
    assert (src[0].instance_dir(guest.inst) / 'disk').exists()
    mark = src[0].console_mark(guest.uuid)
    rec = src[0].call('power_on', instance={'uuid': guest.uuid})
    assert (rec['vm_state'], rec['power_state']) == ('active', 1), rec
    src[0].wait_console(guest.uuid, 'HEARTBEAT 1', timeout=90, since=mark)
    assert running_copies(hosts, guest.uuid) == [hosts.name(src)]
    unthrottle(src[1], guest.uuid)      # libvirt keeps it for the new QEMU


def unthrottle(host, uuid):
    conn = host.open()
    try:
        conn.lookupByUUIDString(uuid).migrateSetMaxSpeed(8192, 0)
    finally:
        conn.close()


def test_neither_host_runs_it_after_the_switch_over(hosts, guest):
    """The source agent dies at the switch-over and the guest's QEMU at the
    destination dies too: the destination (its disks are the newest) owns
    the record, stopped; the end report says so; the source keeps nothing;
    the redelivery returns that outcome."""
    src, dest, since, rid, _before, gt = start_migration(
        hosts, guest, 'source-take-over')
    try:
        src[0].kill()
        os.kill(qemu_of(dest[1], guest.uuid), signal.SIGKILL)
    finally:
        open_gate(gt)
    src[0].start()
    end = wait_report(src[0], guest.uuid, 'live_migrate.end', since)
    assert (end['host'], end['vm_state'], end['power_state']) == (
        dest[0].host, 'stopped', 4), end
    wait_until(lambda: _not_found(src[0], guest.uuid), SETTLED,
               'the source to let go')
    info = dest[0].get_info(guest.uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state']) == (dest[0].host, 'stopped', None, 4), info
    assert running_copies(hosts, guest.uuid) == []
    left_nothing(src, guest.inst, guest.vif)
    again = src[0].call('live_migrate', request_id=rid,
                        instance_uuid=guest.uuid, dest_host=dest[0].host,
                        block_migration=True)
    assert again['host'] == dest[0].host, again
    later = src[0].reports.states(guest.uuid, since)
    assert later[-1]['host'] == dest[0].host, later
    dest[0].destroy(guest.inst)
