"""The journal: outcomes, outbox, instances; thread safety; pruning."""

import json
import threading
import time

import pytest

from compute_agent.journal import Journal


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path))
    yield j
    j.close()


def test_running_then_done_and_reopen(tmp_path, journal):
    journal.record(running=[('u1', 'spawn', 'i1')])
    assert journal.lookup('u1')['status'] == 'running'
    ids = journal.record(done=[('u1', 'spawn', 'i1', json.dumps({'a': 1}),
                                None)],
                         outbox=[('reply', '', 'reply_q', b'body')])
    row = journal.lookup('u1')
    assert row['status'] == 'done' and row['result'] == {'a': 1}
    assert row['result_json'] == '{"a": 1}' and row['failure'] is None
    assert journal.outbox_load() == [(ids[0], 'reply', '', 'reply_q',
                                      b'body')]
    journal.close()
    again = Journal(str(tmp_path))
    assert again.lookup('u1')['status'] == 'done'
    assert again.lookup('nope') is None
    again.close()


def test_forget_running(journal):
    journal.record(running=[('a', 'm', None), ('b', 'm', None)],
                   done=[('b', 'm', None, 'null', 'f')])
    assert [r[0] for r in journal.forget_running()] == ['a']
    assert journal.lookup('a') is None
    assert journal.lookup('b')['failure'] == 'f'


def test_prune_by_age_and_count(journal):
    journal.record(done=[('u%d' % i, 'm', None, 'null', None)
                         for i in range(10)])
    journal.record(running=[('r', 'm', None)])
    assert journal.prune(max_age=3600, max_entries=4) == 6
    assert journal.lookup('r') is not None  # running rows are kept
    time.sleep(0.01)
    assert journal.prune(max_age=0, max_entries=100) == 4


def test_prune_drops_old_tombstones_only(journal):
    journal.save_instance('live', {'name': 'a'})
    journal.save_instance('gone', {'name': 'b'})
    journal.delete_instance('gone')
    journal.next_sequence('rejected')           # a tombstone of its own
    assert journal.prune(max_age=3600, max_entries=100) == 0
    assert journal.instance_sequence('gone') == 1
    time.sleep(0.01)
    assert journal.prune(max_age=0, max_entries=100) == 2
    assert journal.get_instance('live') == {'name': 'a'}
    assert journal.instance_sequence('gone') == 0
    assert journal.instance_sequence('rejected') == 0


def test_outbox_order_and_delete(journal):
    ids = [journal.outbox_add('report', 'ex', 'k', b'%d' % i)
           for i in range(5)]
    assert ids == sorted(ids)
    journal.record(delete_outbox=ids[:2], durable=False)
    journal.outbox_delete([ids[3]])
    assert [r[0] for r in journal.outbox_load()] == [ids[2], ids[4]]
    assert journal.outbox_count() == 2


def test_instances_and_sequence(journal):
    assert journal.get_instance('i1') is None
    assert journal.save_instance('i1', {'name': 'a', 'vm_state': 'x'}) == 1
    assert journal.save_instance('i1', {'name': 'a', 'vm_state': 'y'}) == 2
    assert journal.get_instance('i1') == {'name': 'a', 'vm_state': 'y'}
    journal.save_instance('i0', {'name': 'b'})
    assert [r['name'] for r in journal.list_instances()] == ['b', 'a']
    journal.delete_instance('i1')
    assert journal.get_instance('i1') is None
    assert [r['name'] for r in journal.list_instances()] == ['b']
    # A re-created instance keeps counting up.
    assert journal.save_instance('i1', {'name': 'a'}) == 3
    assert journal.instance_sequence('i1') == 3


def test_concurrent_writers(journal):
    errors = []

    def writer(n):
        try:
            for i in range(50):
                journal.save_instance('shared', {'name': 'x', 'n': n})
                journal.record(done=[('t%d-%d' % (n, i), 'm', None, 'null',
                                      None)], durable=False)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert journal.instance_sequence('shared') == 200
