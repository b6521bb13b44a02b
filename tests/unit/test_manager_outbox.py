"""The manager writes each state change and its report in one journal
commit (issue 10 item 3), through the real notifier and journal."""

import json

import pytest

from compute_agent.rpc import envelope
from compute_agent.rpc.notifier import Notifier

try:
    from tests.unit import manager_fixtures as mf
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    import manager_fixtures as mf


@pytest.fixture
def h(tmp_path):
    harness = mf.Harness(tmp_path)
    harness.manager.notifier = Notifier(harness.journal, harness.conf)
    harness.sent = []
    harness.journal.set_sink(harness.sent.extend)
    yield harness
    harness.close()


def reports(h):
    return [envelope.loads(m.body)['args'] for m in h.sent]


def test_a_spawn_is_two_synced_commits_each_with_its_report(h):
    synced = h.journal.synced_commits
    instance, _ = h.spawn()
    assert h.journal.synced_commits - synced == 2   # spawn.start, spawn.end
    assert [(r['event'], r['sequence']) for r in reports(h)] == [
        ('spawn.start', 1), ('spawn.end', 2)]
    # Both on disk until the broker confirms them, in report order.
    rows = h.journal.outbox_load()
    assert [json.loads(json.loads(r[4])['oslo.message'])['args']['event']
            for r in rows] == ['spawn.start', 'spawn.end']
    assert h.journal.instance_sequence(instance['uuid']) == 2


def test_a_refused_spawn_is_reported_in_one_commit(h):
    first, _ = h.spawn()
    second = mf.make_instance(name=first['name'])
    synced, seen = h.journal.synced_commits, len(h.sent)
    with pytest.raises(Exception, match='InstanceInvalidState|has it'):
        h.spawn(second)
    assert h.journal.synced_commits - synced == 1
    (report,) = reports(h)[seen:]
    assert (report['instance_uuid'], report['event'], report['sequence'],
            report['error']['class']) == (second['uuid'], 'spawn.error', 1,
                                          'InstanceInvalidState')


def test_host_reports_carry_no_sequence(h):
    h.manager.host_state()
    (report,) = reports(h)
    assert 'sequence' not in report and report['host'] == mf.HOST
