"""The journal: outcomes, outbox, instances; thread safety; pruning."""

import json
import sqlite3
import threading
import time

import pytest

from compute_agent import exception
from compute_agent.journal import INSERT_CHUNK
from compute_agent.journal import Journal
from compute_agent.rpc.outbox import Message


@pytest.fixture
def journal(tmp_path):
    j = Journal(str(tmp_path))
    yield j
    j.close()


def test_running_then_done_and_reopen(tmp_path, journal):
    journal.record(running=[('u1', 'spawn', 'i1')])
    assert journal.lookup('u1')['status'] == 'running'
    reply = Message('reply', '', 'reply_q', b'body')
    journal.record(done=[('u1', 'spawn', 'i1', json.dumps({'a': 1}), None)],
                   messages=[reply])
    row = journal.lookup('u1')
    assert row['status'] == 'done' and row['result'] == {'a': 1}
    assert row['result_json'] == '{"a": 1}' and row['failure'] is None
    assert journal.outbox_load() == [(reply.id, 'reply', '', 'reply_q',
                                      b'body')]
    journal.close()
    again = Journal(str(tmp_path))
    assert again.lookup('u1')['status'] == 'done'
    assert again.lookup('nope') is None
    again.close()


def test_a_group_larger_than_one_insert(journal):
    """Rows go in INSERT_CHUNK at a time; a row both running and done in
    one group ends done, as it would row by row."""
    n = 2 * INSERT_CHUNK + 1
    journal.record(running=[('u%d' % i, 'm', 'i') for i in range(n)])
    journal.record(running=[('u0', 'other', 'i')],   # already there: kept
                   done=[('u%d' % i, 'm', 'i', '%d' % i, None)
                         for i in range(0, n, 2)])
    assert [journal.lookup('u%d' % i)['status'] for i in (0, 1, n - 1)] == [
        'done', 'running', 'done']
    assert journal.lookup('u0')['method'] == 'm'
    assert journal.lookup('u%d' % (n - 1))['result'] == n - 1


def test_a_group_of_outcomes_alone_is_one_synced_commit(tmp_path, journal):
    """Outcomes only (a burst of casts): one statement, committed and
    fsynced by itself, as durable as a transaction; a group needing more
    statements is still one transaction, all or nothing."""
    before = journal.synced_commits
    journal.record(done=[('c%d' % i, 'm', 'i', 'null', None)
                         for i in range(INSERT_CHUNK)])
    assert journal.synced_commits == before + 1
    other = sqlite3.connect(journal.path)
    try:
        assert other.execute("SELECT count(*) FROM requests WHERE status ="
                             " 'done'").fetchone()[0] == INSERT_CHUNK
        # Held by another connection: the journal's two-statement
        # transaction cannot write, so none of its rows land.
        other.execute('BEGIN IMMEDIATE')
        journal._db.execute('PRAGMA busy_timeout=50')
        with pytest.raises(sqlite3.OperationalError):
            journal.record(done=[('d%d' % i, 'm', 'i', 'null', None)
                                 for i in range(INSERT_CHUNK + 1)])
        other.execute('ROLLBACK')
    finally:
        other.close()
    assert journal.lookup('d0') is None
    assert journal.lookup('d%d' % INSERT_CHUNK) is None
    assert journal.synced_commits == before + 1


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
    sent = []
    journal.set_sink(sent.extend)
    for i in range(5):
        journal.send([Message('report', 'ex', 'k', b'%d' % i)])
    ids = [m.id for m in sent]
    assert ids == sorted(ids) and len(ids) == 5
    journal.record(confirmed=ids[:2], durable=False)
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


# ------------------------------------------------- one outbox, one commit

def _report(seen):
    """A state report whose body is made from the sequence it is given."""
    def body(sequence):
        seen.append(sequence)
        return json.dumps({'sequence': sequence}).encode()
    return Message('report', 'ex', 'sched', body)


def test_record_and_its_report_are_one_synced_commit(journal):
    sent, seqs = [], []
    journal.set_sink(sent.extend)
    before = journal.synced_commits
    assert journal.save_instance('i1', {'name': 'a'}, [_report(seqs)]) == 1
    assert journal.synced_commits == before + 1
    assert seqs == [1]
    (row,) = journal.outbox_load()
    assert row[0] == sent[0].id and json.loads(row[4]) == {'sequence': 1}
    # A rejected request's report takes the next number, same commit.
    assert journal.next_sequence('i1', [_report(seqs)]) == 2
    assert journal.synced_commits == before + 2 and seqs == [1, 2]
    assert [m.id for m in sent] == [r[0] for r in journal.outbox_load()]


def test_a_refused_record_writes_no_report(journal):
    sent = []
    journal.set_sink(sent.extend)
    journal.save_instance('i1', {'name': 'web'})
    with pytest.raises(exception.InstanceInvalidState) as err:
        journal.save_instance('i2', {'name': 'web'}, [_report([])])
    assert "'web'" in str(err.value) and 'i1' in str(err.value)
    assert journal.get_instance('i2') is None
    assert journal.outbox_count() == 0 and sent == []
    assert journal.instance_sequence('i2') == 0


def test_one_live_instance_per_name_under_a_race(journal):
    """Threads racing to claim one name: exactly one record is stored."""
    won, lost = [], []
    go = threading.Barrier(20)

    def claim(n):
        go.wait()
        try:
            journal.save_instance('u%d' % n, {'name': 'same'})
            won.append(n)
        except exception.InstanceInvalidState:
            lost.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 19
    assert [r['name'] for r in journal.list_instances()] == ['same']
    # Its own record may be saved again; a deleted one frees the name.
    journal.save_instance('u%d' % won[0], {'name': 'same', 'v': 2})
    journal.delete_instance('u%d' % won[0])
    journal.save_instance('u%d' % lost[0], {'name': 'same'})


def test_memory_only_messages_skip_the_disk_but_keep_their_order(journal):
    sent = []
    journal.set_sink(sent.extend)
    journal.send([Message('reply', '', 'q', b'a', durable=False)])
    journal.record(messages=[Message('reply', '', 'q', b'b'),
                             Message('reply', '', 'q', b'c', durable=False)])
    assert [m.body for m in sent] == [b'a', b'b', b'c']
    assert isinstance(sent[1].id, int)
    assert str(sent[0].id).startswith('t') and str(sent[2].id).startswith('t')
    assert journal.outbox_count() == 1


def test_dropped_messages_leave_the_outbox_and_are_recorded(journal):
    sent = []
    journal.set_sink(sent.extend)
    journal.send([Message('reply', '', 'q' * 300, b'x' * 2000)])
    journal.record(dropped=[(sent[0], 'unencodable')], durable=False)
    assert journal.outbox_count() == 0
    ((kind, key, reason, head, _at),) = journal.dropped()
    assert (kind, key, reason, len(head)) == ('reply', 'q' * 300,
                                              'unencodable', 512)
    time.sleep(0.01)
    assert journal.prune(max_age=0, max_entries=100) == 1
    assert journal.dropped() == []


def test_lookup_finds_every_recorded_id_without_asking_sqlite_for_others(
        tmp_path, journal):
    ids = ['id-%d' % i for i in range(2000)]
    journal.record(running=[(u, 'm', None) for u in ids[:1000]])
    journal.record(done=[(u, 'm', None, 'null', None) for u in ids[1000:]],
                   durable=False)
    assert all(journal.lookup(u) is not None for u in ids)
    queries = []
    journal._query = lambda *a: queries.append(a) or []
    assert journal.lookup('never-seen') is None and queries == []
    del journal._query
    journal.close()
    again = Journal(str(tmp_path))          # the filter is rebuilt at open
    assert all(again.lookup(u) is not None for u in ids)
    again.forget_running()
    assert again.lookup(ids[0]) is None and again.lookup(ids[-1])
    again.close()
