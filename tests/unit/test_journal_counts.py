"""Journal queries that answer without decoding every record (periodic
tasks run them on hosts with many instances)."""

from compute_agent import journal as journal_mod
from compute_agent.metrics import Metrics


def test_uuids_and_counts_cover_live_records_only(tmp_path):
    j = journal_mod.Journal(str(tmp_path))
    try:
        for i, vm_state in enumerate(['active', 'active', 'stopped', None, 'error']):
            j.save_instance('u%d' % i, {'uuid': 'u%d' % i, 'name': 'n%d' % i,
                                        'vm_state': vm_state})
        j.delete_instance('u4')
        j.next_sequence('u9')           # a tombstone only
        assert j.instance_uuids() == ['u0', 'u1', 'u2', 'u3']
        assert j.count_by_vm_state() == {'active': 2, 'stopped': 1, None: 1}
        assert j.instance_uuids() == [r['uuid'] for r in j.list_instances()]
    finally:
        j.close()


def test_metrics_gauge_from_counts():
    m = Metrics()
    m.set_instance_counts({'active': 2, None: 1})
    text = m.render()
    assert 'compute_agent_instances{vm_state="active"} 2.0' in text
    assert 'compute_agent_instances{vm_state="None"} 1.0' in text
    m.set_instance_counts({'stopped': 1})
    assert 'vm_state="active"' not in m.render()


def test_instances_with_picks_marked_live_records(tmp_path):
    j = journal_mod.Journal(str(tmp_path))
    try:
        j.save_instance('u0', {'uuid': 'u0', 'name': 'n0'})
        j.save_instance('u1', {'uuid': 'u1', 'name': 'n1', 'migration': None})
        j.save_instance('u2', {'uuid': 'u2', 'name': 'n2',
                               'migration': {'cold': True}})
        j.save_instance('u3', {'uuid': 'u3', 'name': 'n3',
                               'incoming': {'live': True}})
        j.save_instance('u4', {'uuid': 'u4', 'name': 'n4', 'incoming': {}})
        j.save_instance('u5', {'uuid': 'u5', 'name': 'n5', 'incoming': {}})
        j.delete_instance('u5', tombstone={'incoming': {}})
        assert [r['uuid'] for r in j.instances_with('incoming', 'migration')] \
            == ['u2', 'u3', 'u4']
        assert j.instances_with('migration') == [
            {'uuid': 'u2', 'name': 'n2', 'migration': {'cold': True}}]
        assert j.instances_with() == []
    finally:
        j.close()
