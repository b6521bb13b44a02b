"""Settling a cold migration or cold revert a death interrupted
(cold_migration_settle), as case tables: the pure decisions, then a real
Manager on ``test:///default`` whose other agent is a fake (the two-host
crash tests in tests/functional/test_e2e_cold_migration_crash.py use real
ones)."""

import pytest

from compute_agent import cold_migration_settle as cms
from compute_agent import exception
from compute_agent.rpc import peer as peer_mod

try:
    from tests.unit import manager_fixtures as mf
    from tests.unit.fake_peer import peer  # noqa: F401
    from tests.unit.manager_fixtures import h  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf
    from fake_peer import peer  # noqa: F401
    from manager_fixtures import h  # noqa: F401

ME, OTHER = mf.HOST, 'other-host'
RID = 'req-cold'


def status(holds, migration=None, record=None):
    return {'active': False, 'running': False, 'job': False, 'holds': holds,
            'migration': migration, 'record': record, 'sequence': 7}


def mark(dest=ME, decided=None):
    return {'cold': True, 'dest': dest, 'request_id': RID, 'flavor': {},
            'decided': decided}


# -- the decisions ------------------------------------------------------------------

@pytest.mark.parametrize('there, verdict', [
    (status('owner', mark(decided=ME)), 'take-over'),
    (status('owner', mark()), 'wait'),                  # still copying
    (status('owner', mark(dest='third-host')), 'remove'),
    (status('owner', mark(dest='third-host', decided='third-host')), 'remove'),
    (status('owner', None), 'remove'),                  # aborted, runs there
    (status('owner', {'dest': ME, 'phase': 'check'}), 'remove'),   # live's
    (status('incoming'), 'remove'),
    (status(None), 'remove'),
])
def test_destination_verdict(there, verdict):
    assert cms.incoming_verdict(there, ME) == verdict


@pytest.mark.parametrize('decided, verdict', [
    (None, 'abort'), (OTHER, 'hand-over')])
def test_source_verdict(decided, verdict):
    assert cms.source_verdict(mark(OTHER, decided)) == verdict


@pytest.mark.parametrize('record, step', [
    (None, None),
    ({}, None),
    ({'migration': mark(OTHER)}, 'source'),
    ({'migration': {'cold': 'revert', 'to': OTHER}}, 'revert'),
    ({'incoming': {'source': OTHER, 'cold': True}}, 'incoming'),
    ({'incoming': {'source': OTHER, 'live': True}}, None),
    ({'incoming': {'source': OTHER, 'restore': True}}, None),
    ({'migration': {'dest': OTHER, 'phase': 'switched'}}, None),
])
def test_cold_step(record, step):
    assert cms.cold_step(record) == step


# -- the source: its record mid-migrate ------------------------------------------------

def left_migrating(h, **record):
    """A stopped guest whose record a death left mid-migrate: ``record``'s
    fields over ``task_state='resize_migrating'``."""
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']
    h.manager.driver.power_off(instance, 0)
    h.force_record(uuid, task_state='resize_migrating', **record)
    return uuid


def source_marked(h, decided=None):
    return left_migrating(h, migration=mark(OTHER, decided))


def test_source_undecided_aborts_and_the_redelivery_gets_the_error(h, peer):
    uuid = source_marked(h)
    since = len(h.notifier.reports)
    assert h.manager.settle_migrations() == []
    assert (OTHER, '_migration_rollback') in peer.calls
    info = h.info(uuid)
    assert (info['host'], info['vm_state'], info['task_state'],
            info['power_state']) == (ME, 'active', None, 1), info
    last = h.notifier.reports[since:][-1]
    assert (last['event'], last['host']) == ('migrate.error', ME)
    peer.calls.clear()
    with pytest.raises(exception.MigrationError):
        h.call('migrate', mf.context(RID), instance_uuid=uuid, dest_host=OTHER)
    assert peer.calls == []


def test_source_undecided_aborts_though_the_destination_is_away(h, peer):
    uuid = source_marked(h)
    peer.answers = {'_migration_rollback': peer_mod.PeerUnavailable('down')}
    assert h.manager.settle_migrations() == []
    assert h.info(uuid)['power_state'] == 1


def test_source_decided_hands_over_and_keeps_the_outcome(h, peer):
    uuid = source_marked(h, decided=OTHER)
    outcome = {'uuid': uuid, 'host': OTHER, 'vm_state': 'resized'}
    peer.answers = {'_migration_take_over': outcome}
    assert h.manager.settle_migrations() == []
    assert (OTHER, '_migration_take_over') in peer.calls
    assert h.journal.get_instance(uuid) is None
    assert mf.Harness.domain(h, uuid) is None
    peer.calls.clear()
    assert h.call('migrate', mf.context(RID), instance_uuid=uuid,
                  dest_host=OTHER) == outcome
    assert peer.calls == []


@pytest.mark.parametrize('failure', [
    peer_mod.PeerUnavailable('down'),
    exception.HypervisorUnavailable('libvirt away'),
])
def test_source_decided_waits_for_the_destination(h, peer, failure):
    uuid = source_marked(h, decided=OTHER)
    peer.answers = {'_migration_take_over': failure}
    assert h.manager.settle_migrations() == [uuid]
    record = h.journal.get_instance(uuid)
    assert record['migration']['decided'] == OTHER
    assert h.manager.driver.get_power_state(
        record['spec']['instance']) != 1            # never started here
    # Its redelivery does not start a second migration either.
    with pytest.raises(exception.MigrationError):
        h.call('migrate', mf.context(RID), instance_uuid=uuid, dest_host=OTHER)
    assert [c for c in peer.calls if c[1] == '_cold_migration_receive'] == []


# -- the destination: its incoming copy, or a revert_resize of a cold migration -------

def incoming(h):
    return left_migrating(
        h, incoming={'source': OTHER, 'block': True, 'cold': True})


def reverting(h):
    instance = mf.make_instance()
    h.spawn(instance)
    uuid = instance['uuid']
    record = h.journal.get_instance(uuid)
    flavor = record['spec']['instance']['flavor']
    h.force_record(uuid, vm_state='resized', task_state='resize_reverting',
                   migration={'cold': 'revert', 'to': OTHER,
                              'request_id': RID},
                   resize={'host': OTHER, 'old_flavor': flavor,
                           'new_flavor': flavor, 'source_spec': record['spec'],
                           'files': {'grow': [], 'replace': [], 'drop': [],
                                     'create': []}})
    return uuid


STATUS, RESTORE = '_migration_status', '_cold_migration_restore'


@pytest.mark.parametrize('left, asked, answer, outcome', [
    # the incoming copy, by the source's status of the guest
    (incoming, STATUS, status('owner', mark(decided=ME)), 'owner'),
    (incoming, STATUS, status('owner', mark()), 'incoming'),
    (incoming, STATUS, status('owner', None), 'gone'),
    (incoming, STATUS, status(None), 'gone'),
    (incoming, STATUS, peer_mod.PeerUnavailable('down'), 'incoming'),
    # the interrupted revert, by the source's restore
    (reverting, RESTORE, {'host': OTHER, 'vm_state': 'active'}, 'reverted'),
    (reverting, RESTORE, peer_mod.PeerUnavailable('down'), 'reverting'),
    (reverting, RESTORE, exception.MigrationError('no kept files'), 'back here'),
])
def test_destination_settles(h, peer, left, asked, answer, outcome):
    uuid = left(h)
    peer.answers = {asked: answer}
    waiting = h.manager.settle_migrations()
    record = h.journal.get_instance(uuid)
    if outcome in ('gone', 'reverted'):
        assert waiting == [] and record is None
        assert mf.Harness.domain(h, uuid) is None
        if outcome == 'reverted':
            # The redelivered revert_resize: the outcome, nothing asked.
            peer.calls.clear()
            assert h.call('revert_resize', mf.context(RID),
                          instance_uuid=uuid)['host'] == OTHER
            assert peer.calls == []
    elif outcome == 'incoming':
        assert waiting == [uuid] and record['incoming']['cold']
        with pytest.raises(exception.InstanceNotFound):
            h.info(uuid)
    elif outcome == 'reverting':
        assert waiting == [uuid] and record['migration']['cold'] == 'revert'
    elif outcome == 'owner':
        assert waiting == []
        info = h.info(uuid)
        assert (info['host'], info['vm_state'], info['task_state'],
                info['power_state']) == (ME, 'resized', None, 1), info
        assert h.journal.instance_sequence(uuid) > 7
        assert h.notifier.reports[-1]['event'] == 'migrate.end'
    else:
        assert outcome == 'back here'
        assert waiting == []
        assert (record['vm_state'], record['task_state'], record['power_state'],
                record['migration']) == ('resized', None, 1, None)


def test_interrupted_confirm_still_drops_the_kept_copy(h, peer):
    """confirm_resize of a cold migration a restart interrupted: recovery
    finishes it here and asks the source again to delete its copy."""
    uuid = reverting(h)
    h.force_record(uuid, task_state='resize_confirming', migration=None)
    h.manager.recover()
    assert (OTHER, '_cold_migration_drop') in peer.calls
    record = h.journal.get_instance(uuid)
    assert (record['task_state'], record['resize']) == (None, None)
