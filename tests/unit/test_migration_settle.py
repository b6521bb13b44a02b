"""Settling a live migration a death interrupted (migration_settle), and the
outcome a redelivered ``live_migrate`` gets after a restart: a real Manager
on ``test:///default``; the other agent is a fake (the two-host crash tests
in tests/functional/test_e2e_migration_crash.py use real ones)."""

import pytest

from compute_agent import exception
from compute_agent import migration_settle
from compute_agent.journal import Journal
from compute_agent.rpc import peer as peer_mod

try:
    from tests.unit import manager_fixtures as mf
    from tests.unit.manager_fixtures import h  # noqa: F401
    from tests.unit.fake_peer import FakePeer, peer  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf
    from manager_fixtures import h  # noqa: F401
    from fake_peer import FakePeer, peer  # noqa: F401

DEST = 'other-host'
RUNNING = {'active': True, 'running': True, 'job': False}
GONE = {'active': False, 'running': False, 'job': False}


def marked(h, phase='migrating', request_id='req-mig'):
    """A running guest whose record a killed source left mid-migration."""
    instance = mf.make_instance()
    h.spawn(instance)
    h.force_record(instance['uuid'], task_state='migrating', migration={
        'dest': DEST, 'block': True, 'request_id': request_id,
        'phase': phase, 'start_vm_state': 'active'})
    return instance['uuid']


def status(holds, running, migration=None, record=None):
    return dict(RUNNING if running else GONE, holds=holds,
                migration=migration, record=record, sequence=3)


def test_tombstone_keeps_what_a_delete_left(tmp_path):
    j = Journal(str(tmp_path))
    j.save_instance('u1', {'uuid': 'u1', 'name': 'a'})
    assert j.tombstone('u1') is None
    j.delete_instance('u1', tombstone={'migrated': {'request_id': 'r'}})
    assert j.get_instance('u1') is None
    assert j.tombstone('u1') == {'migrated': {'request_id': 'r'}}
    j.save_instance('u1', {'uuid': 'u1', 'name': 'a'})   # spawned again
    assert j.tombstone('u1') is None
    j.close()


def test_guest_still_here_stays_and_the_redelivery_gets_the_error(h, peer):
    uuid = marked(h)
    since = len(h.notifier.reports)
    assert h.manager.settle_migrations() == []
    info = h.info(uuid)
    assert (info['vm_state'], info['task_state'], info['host']) == (
        'active', None, mf.HOST)
    assert (DEST, '_migration_rollback') in peer.calls
    last = h.notifier.reports[since:][-1]
    assert last['event'] == 'live_migrate.error' and last['host'] == mf.HOST
    assert h.journal.get_instance(uuid).get('migration') is None
    # The redelivered request: its outcome, no second migration.
    peer.calls.clear()
    with pytest.raises(exception.MigrationError):
        h.call('live_migrate', mf.context('req-mig'), instance_uuid=uuid,
               dest_host=DEST)
    assert peer.calls == []


def test_guest_at_the_destination_is_handed_over(h, peer, monkeypatch):
    uuid = marked(h, phase='migrating')
    h.domain(uuid).destroy()        # it left (the source's cleanup)
    monkeypatch.setattr(h.manager.driver, 'migration_view', lambda i: GONE)
    outcome = {'uuid': uuid, 'host': DEST, 'vm_state': 'active'}
    peer.answers = {'_migration_status': status('incoming', True),
                    '_migration_take_over': outcome}
    assert h.manager.settle_migrations() == []
    assert (DEST, '_migration_take_over') in peer.calls
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    # A restart later, the redelivery still gets the outcome (journal).
    h.manager._moving.clear()
    peer.calls.clear()
    assert h.call('live_migrate', mf.context('req-mig'), instance_uuid=uuid,
                  dest_host=DEST) == outcome
    assert peer.calls == []
    # Another request for it: not found here, nothing started.
    with pytest.raises(exception.InstanceNotFound):
        h.call('live_migrate', mf.context('req-other'), instance_uuid=uuid,
               dest_host=DEST)


def test_destination_owning_it_already_means_let_go(h, peer, monkeypatch):
    uuid = marked(h, phase='switched')
    h.domain(uuid).destroy()        # it left (the source's cleanup)
    monkeypatch.setattr(h.manager.driver, 'migration_view', lambda i: GONE)
    owned = {'uuid': uuid, 'host': DEST}
    peer.answers = {'_migration_status': status('owner', True, record=owned)}
    assert h.manager.settle_migrations() == []
    assert h.journal.get_instance(uuid) is None
    assert h.journal.tombstone(uuid)['migrated']['outcome'] == owned


def test_unsettled_while_the_peer_is_away_or_libvirt_moves_it(h, peer,
                                                               monkeypatch):
    uuid = marked(h, phase='switched')
    monkeypatch.setattr(h.manager.driver, 'migration_view', lambda i: GONE)
    peer.answers = {'_migration_status': peer_mod.PeerUnavailable('down')}
    assert h.manager.settle_migrations() == [uuid]
    peer.answers = {'_migration_status': dict(status('incoming', False),
                                              job=True)}
    assert h.manager.settle_migrations() == [uuid]
    assert h.journal.get_instance(uuid)['migration']['phase'] == 'switched'
    # A request of this process moving it is left alone.
    h.manager._moving.add(uuid)
    peer.calls.clear()
    assert h.manager.settle_migrations() == []
    assert peer.calls == []


def incoming(h, source='src-host'):
    """A destination's record a dead migration left ``incoming``."""
    instance = mf.make_instance()
    h.spawn(instance)
    h.force_record(instance['uuid'], incoming={'source': source,
                                               'block': True, 'live': True})
    return instance['uuid']


def test_a_new_incoming_migration_clears_leftovers_and_refuses_an_owned_guest(h):
    """What _migration_check and _cold_migration_receive do first."""
    owned = h.spawn()[0]['uuid']
    with pytest.raises(exception.MigrationPreCheckError) as info:
        h.manager._clear_incoming(owned)
    assert 'already has it' in str(info.value)
    assert h.journal.get_instance(owned) is not None
    assert mf.Harness.domain(h, owned) is not None
    left = incoming(h)
    h.manager._clear_incoming(left)
    assert h.journal.get_instance(left) is None
    assert mf.Harness.domain(h, left) is None


def test_destination_rolls_back_what_the_source_kept(h, peer):
    uuid = incoming(h)
    peer.answers = {'_migration_status': status('owner', True)}
    assert h.manager.settle_migrations() == []
    assert h.journal.get_instance(uuid) is None
    assert mf.Harness.domain(h, uuid) is None


def test_destination_waits_while_the_source_migrates_it(h, peer):
    uuid = incoming(h)
    peer.answers = {'_migration_status': status(
        'owner', True, migration={'dest': mf.HOST, 'phase': 'migrating'})}
    assert h.manager.settle_migrations() == [uuid]
    assert h.journal.get_instance(uuid)['incoming']


def test_destination_takes_over_a_guest_no_source_claims(h, peer):
    uuid = incoming(h)
    peer.answers = {'_migration_status': status(None, False)}
    assert h.manager.settle_migrations() == []
    info = h.info(uuid)
    assert info['host'] == mf.HOST and info['task_state'] is None


def test_an_incoming_mark_not_of_live_migration_is_left_alone(h, peer):
    uuid = incoming(h)
    h.force_record(uuid, incoming={'source': 'src-host', 'block': True})
    assert h.manager.settle_migrations() == []
    assert peer.calls == []
    assert h.journal.get_instance(uuid)['incoming']


# -- neither host runs the guest (docs: protocol-migration-crashes) ------------------

@pytest.mark.parametrize('phase, dest_defined, owner', [
    # Before libvirt finished: the source's disks are the newest...
    ('check', False, 'source'),
    ('prepare', False, 'source'),
    ('migrating', False, 'source'),
    # ...unless the destination defined the domain (it does so only once
    # the guest switched over there).
    ('migrating', True, 'dest'),
    ('switched', False, 'dest'),
    ('switched', True, 'dest'),
])
def test_stopped_owner(phase, dest_defined, owner):
    there = dict(status('incoming', False), defined=dest_defined)
    assert migration_settle.stopped_owner(phase, there) == owner


def stopped_here(h, phase):
    """A marked record whose guest does not run here either."""
    uuid = marked(h, phase=phase)
    h.domain(uuid).destroy()
    return uuid


def test_neither_runs_it_before_the_switch_over_it_stays_here_stopped(h, peer):
    uuid = stopped_here(h, 'migrating')
    peer.answers = {'_migration_status': status('incoming', False)}
    since = len(h.notifier.reports)
    assert h.manager.settle_migrations() == []
    assert (DEST, '_migration_rollback') in peer.calls
    assert (DEST, '_migration_take_over') not in peer.calls
    info = h.info(uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state']) == (mf.HOST, 'stopped', None, 4)
    last = h.notifier.reports[since:][-1]
    assert (last['event'], last['host'], last['power_state']) == (
        'live_migrate.error', mf.HOST, 4)
    with pytest.raises(exception.MigrationError):     # the redelivery
        h.call('live_migrate', mf.context('req-mig'), instance_uuid=uuid,
               dest_host=DEST)


@pytest.mark.parametrize('phase, dest_defined', [('switched', False),
                                                 ('migrating', True)])
def test_neither_runs_it_after_the_switch_over_the_destination_owns_it(
        h, peer, phase, dest_defined):
    uuid = stopped_here(h, phase)
    outcome = {'uuid': uuid, 'host': DEST, 'vm_state': 'stopped',
               'power_state': 4}
    peer.answers = {'_migration_status': dict(status('incoming', False),
                                              defined=dest_defined),
                    '_migration_take_over': outcome}
    assert h.manager.settle_migrations() == []
    assert (DEST, '_migration_take_over') in peer.calls
    assert (DEST, '_migration_rollback') not in peer.calls
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    assert h.domain(uuid) is None               # the source's copy is gone
    h.manager._moving.clear()
    assert h.call('live_migrate', mf.context('req-mig'), instance_uuid=uuid,
                  dest_host=DEST) == outcome


def test_a_take_over_of_a_guest_not_running_ends_stopped(h, peer):
    """The destination's take-over reports what libvirt says there."""
    uuid = incoming(h)
    h.domain(uuid).destroy()
    out = h.call('_migration_take_over', instance_uuid=uuid,
                 migration={'sequence': 3})
    assert (out['host'], out['vm_state'], out['power_state']) == (
        mf.HOST, 'stopped', 4)


def test_a_failed_cleanup_after_the_hand_over_is_retried(h, peer, monkeypatch):
    """The source's libvirtd is down when it lets go: the record goes (the
    destination owns it), what is left here is removed by a later round."""
    uuid = marked(h, phase='switched')
    h.domain(uuid).destroy()
    outcome = {'uuid': uuid, 'host': DEST}
    peer.answers = {'_migration_status': status('incoming', True),
                    '_migration_take_over': outcome}
    real = h.manager.driver.cleanup_migrated

    def down(*args, **kw):
        raise exception.HypervisorUnavailable(uri='test:///default',
                                              reason='down')
    monkeypatch.setattr(h.manager.driver, 'cleanup_migrated', down)
    assert h.manager.settle_migrations() == [uuid]
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)
    assert h.domain(uuid) is not None                   # left here
    assert h.journal.tombstone(uuid)['leftover']
    assert h.manager.settle_migrations() == [uuid]      # still down
    monkeypatch.setattr(h.manager.driver, 'cleanup_migrated', real)
    assert h.manager.settle_migrations() == []
    assert h.domain(uuid) is None
    stone = h.journal.tombstone(uuid)
    assert 'leftover' not in stone and stone['migrated']['outcome'] == outcome
    assert h.manager.settle_migrations() == []
    # The redelivery still gets the outcome.
    h.manager._moving.clear()
    assert h.call('live_migrate', mf.context('req-mig'), instance_uuid=uuid,
                  dest_host=DEST) == outcome


def test_a_leftover_of_a_guest_back_here_is_not_touched(h, peer, monkeypatch):
    uuid = marked(h, phase='switched')
    h.journal.delete_instance(uuid, tombstone={'leftover': {
        'spec': h.journal.get_instance(uuid) or {}, 'block': True}})
    assert h.journal.tombstones_with('leftover')
    # The guest came back: a live record again.
    h.journal.save_instance(uuid, {'uuid': uuid, 'name': 'back'})
    calls = []
    monkeypatch.setattr(h.manager.driver, 'cleanup_migrated',
                        lambda *a, **k: calls.append(a))
    assert h.journal.tombstones_with('leftover') == []
    assert h.manager._clean_leftovers() == []
    assert calls == []


# -- libvirt's migration fails and the guest is gone from the source ----------------

def failing_copy(h, monkeypatch, there):
    """A live_migrate whose copy fails with the source's QEMU gone; the
    destination answers ``_migration_status`` with ``there``."""
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']

    def copy(*args, **kw):
        h.domain(uuid).destroy()            # the QEMU died under it
        raise exception.HypervisorUnavailable(uri='x', reason='qemu died')
    monkeypatch.setattr(h.manager.driver, 'live_migrate', copy)
    FakePeer.answers = {
        '_migration_check': {'uri': 'qemu+tcp://peer/system',
                             'migrate_uri': 'tcp://peer'},
        '_migration_prepare': {'instance_dir': '/nowhere'},
        '_migration_status': there,
        '_migration_take_over': {'uuid': uuid, 'host': DEST}}
    return uuid


def test_copy_failed_with_the_guest_nowhere_stays_here_stopped(h, peer,
                                                               monkeypatch):
    uuid = failing_copy(h, monkeypatch, status('incoming', False))
    since = len(h.notifier.reports)
    with pytest.raises(exception.MigrationError):
        h.call('live_migrate', mf.context('req-q'), instance_uuid=uuid,
               dest_host=DEST, block_migration=True)
    errors = [(r['event'], r['vm_state'], r['power_state'])
              for r in h.notifier.reports[since:]
              if r['event'] == 'live_migrate.error']
    assert errors == [('live_migrate.error', 'stopped', 4)]    # one report
    assert (DEST, '_migration_rollback') in peer.calls
    assert (DEST, '_migration_take_over') not in peer.calls
    info = h.info(uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state']) == (mf.HOST, 'stopped', None, 4)
    assert h.journal.get_instance(uuid).get('migration') is None
    assert h.domain(uuid) is not None           # its disks and domain kept


def test_copy_failed_with_the_guest_at_the_destination_hands_over(
        h, peer, monkeypatch):
    uuid = failing_copy(h, monkeypatch, dict(status('incoming', False),
                                             defined=True))
    out = h.call('live_migrate', mf.context('req-q'), instance_uuid=uuid,
                 dest_host=DEST, block_migration=True)
    assert out['host'] == DEST
    assert (DEST, '_migration_take_over') in peer.calls
    with pytest.raises(exception.InstanceNotFound):
        h.info(uuid)


def test_copy_failed_and_the_destination_away_leaves_it_to_settle(
        h, peer, monkeypatch):
    uuid = failing_copy(h, monkeypatch, peer_mod.PeerUnavailable('away'))
    with pytest.raises(exception.MigrationError):
        h.call('live_migrate', mf.context('req-q'), instance_uuid=uuid,
               dest_host=DEST, block_migration=True)
    record = h.journal.get_instance(uuid)
    assert record['task_state'] == 'migrating'
    assert record['migration']['phase'] == 'migrating'
    FakePeer.answers['_migration_status'] = status('incoming', False)
    assert h.manager.settle_migrations() == []
    info = h.info(uuid)
    assert (info['host'], info['vm_state'], info['power_state']) == (
        mf.HOST, 'stopped', 4)
