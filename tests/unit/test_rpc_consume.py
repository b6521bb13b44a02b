"""The consume loop without a broker: ``RPCServer._on_message`` and
``_finish_jobs`` driven with fake channels and deliveries, a real journal
and real worker threads.

The broker tests (tests/functional/test_rpc_*) show the same behaviour on
RabbitMQ; here each rule is pinned to what the server does on its channels:
acks (in bulk, after the outcome is on disk), rejects to the dead-letter
queue, dedup by ``_unique_id``, group commit, replies and dropped replies,
admission (state-changing requests past the bound wait decoded, in order).
"""

import collections
import json
import threading
import time

import pytest
from oslo_config import cfg

from compute_agent import conf as agent_conf
from compute_agent import exception
from compute_agent.journal import Journal
from compute_agent.rpc import envelope
from compute_agent.rpc import server as server_mod

try:
    from tests.unit.fake_amqp import Channel
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from fake_amqp import Channel


class Delivery:
    def __init__(self, tag, body, redelivered=False):
        self.delivery_tag = tag
        self.body = body
        self.delivery_info = {'redelivered': redelivered}


class Dispatcher:
    """``count`` and ``urgent`` (keyed by ``key``; ``urgent`` is checked as
    it arrives, like a destroy) and ``ping`` (keyless, read-only); ``gate``
    holds ``count`` until set."""

    unheld_methods = frozenset(('ping',))
    arrival_methods = frozenset(('urgent',))

    def __init__(self):
        self.runs = collections.Counter()
        self.gate = threading.Event()
        self.gate.set()
        self.reported = []
        self.validated = []      # tokens, in the order validated
        self.order = []          # tokens, in the order run

    def validate(self, method, args, version):
        self.validated.append((args or {}).get('token', method))
        if method not in ('count', 'ping', 'urgent'):
            raise exception.InvalidRequest('method', 'unknown method')
        return args

    def key(self, method, args):
        return args.get('key') if method in ('count', 'urgent') else None

    def dispatch(self, method, args, context):
        if method == 'count':
            self.gate.wait(10)
            self.runs[args['token']] += 1
            self.order.append(args['token'])
            return {'token': args['token']}
        if method == 'urgent':
            self.order.append(args['token'])
        return {'pong': True}

    def report_invalid(self, method, uuid, error, context):
        self.reported.append((method, uuid, type(error).__name__))


@pytest.fixture
def loop(tmp_path, request):
    conf = agent_conf.register_all(cfg.ConfigOpts())
    conf([], project='test', default_config_files=[])
    conf.set_override('state_path', str(tmp_path))
    # @pytest.mark.builds(n): max_concurrent_builds (admits 2 n at once)
    builds = request.node.get_closest_marker('builds')
    if builds:
        conf.set_override('max_concurrent_builds', builds.args[0])
    journal = Journal(str(tmp_path))
    server = server_mod.RPCServer(conf, Dispatcher(), journal,
                                  broker=object())
    consume, publish = Channel(), Channel()
    server._settle.attach(consume)
    server.publisher.attach(publish)
    server.tags = iter(range(1, 10000))
    yield server, consume, publish
    server.executor.shutdown()
    server._committer.stop()
    journal.close()


def deliver(server, method, args=None, reply_q=None, unique_id=None,
            redelivered=False):
    payload = envelope.build_request(
        method, args, msg_id='m-%s' % unique_id if reply_q else None,
        reply_q=reply_q, unique_id=unique_id)
    tag = next(server.tags)
    server._on_message(Delivery(tag, envelope.dumps(payload), redelivered))
    server._start_ready()    # what the loop does after each drain
    return tag


def finish(server, n):
    """Wait until ``n`` jobs have completed, then run one loop turn's
    bookkeeping: record, ack, publish."""
    deadline = time.monotonic() + 10
    while server._completions.qsize() < n:
        assert time.monotonic() < deadline, 'jobs did not complete'
        time.sleep(0.005)
    server._finish_jobs(wait=True)
    server._admit_held()     # what the loop does after _finish_jobs
    server.publisher.pump()


def reply_of(call):
    inner = envelope.loads(call[3])
    return inner


def test_undecodable_and_invalid_casts_go_to_the_dead_letter_queue(loop):
    server, consume, _ = loop
    server._on_message(Delivery(next(server.tags), b'not json'))
    deliver(server, 'nosuch', {'instance_uuid': 'u-1'})
    assert consume.settled() == [('reject', 1, False), ('reject', 2, False)]
    assert server.stats['dead_lettered'] == 2


def test_invalid_call_is_answered_and_acked(loop):
    server, consume, publish = loop
    tag = deliver(server, 'nosuch', reply_q='reply_a', unique_id='bad-1')
    finish(server, 1)
    assert consume.settled() == [('ack', tag, False)]
    (call,) = publish.published()
    assert call[1:3] == ('reply_a', True)
    failure = envelope.deserialize_failure(reply_of(call)['failure'])
    assert failure['class'] == 'InvalidRequest'
    assert server.journal.lookup('bad-1')['status'] == 'done'


def test_casts_finished_together_are_one_commit_and_one_bulk_ack(loop):
    server, consume, publish = loop
    server.dispatcher.gate.clear()
    tags = [deliver(server, 'count', {'key': 'k%d' % (i % 3),
                                      'token': 't%d' % i},
                    unique_id='u%d' % i) for i in range(12)]
    assert consume.settled() == []        # nothing acked before it ran
    synced = server.journal.synced_commits
    server.dispatcher.gate.set()
    finish(server, 12)
    assert server.journal.synced_commits == synced + 1   # group commit
    assert consume.settled() == [('ack', tags[-1], True)]
    assert all(server.journal.lookup('u%d' % i)['status'] == 'done'
               for i in range(12))
    assert publish.published() == []      # casts: no reply


def test_a_call_is_answered_after_its_outcome_is_recorded(loop):
    server, consume, publish = loop
    tag = deliver(server, 'count', {'key': 'k', 'token': 'x'},
                  reply_q='reply_b', unique_id='c-1')
    finish(server, 1)
    (call,) = publish.published()
    reply = reply_of(call)
    assert (reply['result'], reply['_msg_id'], reply['ending']) == (
        {'token': 'x'}, 'm-c-1', True)
    assert consume.settled() == [('ack', tag, False)]
    # A keyed call's reply is in the outbox until the broker confirms it,
    # then the next commit deletes it.
    assert server.journal.outbox_count() == 1
    server.publisher._on_ack(1, False)
    server._finish_jobs(wait=True)
    assert server.journal.outbox_count() == 0


def test_keyless_reply_is_memory_only(loop):
    server, _, publish = loop
    synced = server.journal.synced_commits
    deliver(server, 'ping', reply_q='reply_c', unique_id='p-1')
    finish(server, 1)
    assert reply_of(publish.published()[0])['result'] == {'pong': True}
    assert server.journal.outbox_count() == 0
    assert server.journal.synced_commits == synced   # no fsync for a ping


def test_duplicates_run_once(loop):
    server, consume, publish = loop
    server.dispatcher.gate.clear()
    first = deliver(server, 'count', {'key': 'k', 'token': 'd'},
                    reply_q='reply_d', unique_id='dup-1')
    again = deliver(server, 'count', {'key': 'k', 'token': 'd'},
                    reply_q='reply_d', unique_id='dup-1', redelivered=True)
    server.dispatcher.gate.set()
    finish(server, 1)
    assert server.dispatcher.runs['d'] == 1
    assert consume.settled() == [('ack', again, True)]   # both, in bulk
    assert first < again
    # Seen again after it finished: answered from the journal, not run.
    late = deliver(server, 'count', {'key': 'k', 'token': 'd'},
                   reply_q='reply_e', unique_id='dup-1')
    finish(server, 1)
    assert server.dispatcher.runs['d'] == 1
    assert consume.settled()[-1] == ('ack', late, False)
    # The copy that came while it ran shares its reply; the one after it
    # ended gets the outcome again.
    replies = [reply_of(c) for c in publish.published()]
    assert [r['result'] for r in replies] == [{'token': 'd'}] * 2
    assert server.stats['duplicates'] == 2


def test_a_query_asked_again_before_it_is_recorded_is_answered_again(loop):
    """A read-only call is answered at once and recorded lazily: the same
    message arriving in between joins it, and gets the reply too."""
    server, consume, publish = loop
    deliver(server, 'ping', reply_q='reply_q1', unique_id='p-again')
    deadline = time.monotonic() + 10
    while server._completions.qsize() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    server._finish_jobs()                   # answered, not yet recorded
    server.publisher.pump()
    assert len(publish.published()) == 1
    assert 'p-again' in server._inflight
    deliver(server, 'ping', reply_q='reply_q1', unique_id='p-again')
    server._finish_jobs(wait=True)
    server.publisher.pump()
    replies = [reply_of(c) for c in publish.published()]
    assert [(r['result'], r['_msg_id']) for r in replies] == [
        ({'pong': True}, 'm-p-again')] * 2
    assert len(consume.settled()) == 1 and server.dispatcher.runs == {}


def test_a_reply_no_frame_can_carry_is_dropped_and_recorded(loop):
    server, consume, publish = loop
    tag = deliver(server, 'count', {'key': 'k', 'token': 'p'},
                  reply_q='r' * 300, unique_id='poison-1')
    finish(server, 1)
    assert consume.settled() == [('ack', tag, False)]
    assert publish.published() == []
    assert server.journal.outbox_count() == 1   # until the next commit
    tag2 = deliver(server, 'count', {'key': 'k', 'token': 'q'},
                   reply_q='reply_f', unique_id='after-1')
    finish(server, 1)
    assert server.journal.outbox_count() == 1   # only the new reply
    assert [r[:3] for r in server.journal.dropped()] == [
        ('reply', 'r' * 300, 'unencodable')]
    (call,) = publish.published()
    assert call[1] == 'reply_f' and consume.settled()[-1][1] == tag2
    assert json.loads(reply_of(call)['failure'] or 'null') is None


def test_outcomes_finished_during_a_commit_join_the_next_one(loop):
    """The loop reads on while the committer fsyncs; nothing is acked
    before its commit, and a call delivered again meanwhile is answered."""
    server, consume, publish = loop
    real, gate, commits = server.journal.record, threading.Event(), []

    def slow_record(**changes):
        if changes.get('done'):
            gate.wait(10)
            commits.append(sorted(d[0] for d in changes['done']))
        return real(**changes)
    server.journal.record = slow_record
    first = deliver(server, 'count', {'key': 'a', 'token': '1'},
                    reply_q='reply_g', unique_id='g-1')
    deadline = time.monotonic() + 10
    while server._completions.qsize() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    server._finish_jobs()                  # handed to the committer
    assert server._committer.busy()
    again = deliver(server, 'count', {'key': 'a', 'token': '1'},
                    reply_q='reply_h', unique_id='g-1', redelivered=True)
    second = deliver(server, 'count', {'key': 'b', 'token': '2'},
                     unique_id='g-2')
    while server._completions.qsize() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    server._finish_jobs()                  # busy: g-2 waits for the next
    assert consume.settled() == [] and publish.published() == []
    gate.set()
    finish(server, 0)
    finish(server, 0)
    assert commits == [['g-1'], ['g-2']]
    assert server.dispatcher.runs == {'1': 1, '2': 1}
    acked = {t for c in consume.settled() for t in (
        range(1, c[1] + 1) if c[2] else (c[1],))}
    assert {first, again, second} <= acked
    assert sorted(c[1] for c in publish.published()) == ['reply_g',
                                                         'reply_h']


def test_a_failed_commit_is_retried_and_nothing_acked_before(loop):
    server, consume, publish = loop
    real, failures = server.journal.record, []

    def failing_once(**changes):
        if changes.get('done') and not failures:
            failures.append(1)
            raise OSError('disk full')
        return real(**changes)
    server.journal.record = failing_once
    tag = deliver(server, 'count', {'key': 'k', 'token': 'f'},
                  reply_q='reply_i', unique_id='f-1')
    ping = deliver(server, 'ping', reply_q='reply_j', unique_id='f-2')
    finish(server, 2)
    assert failures and consume.settled() == []
    # The read-only call was answered at once, the state-changing one not.
    assert [c[1] for c in publish.published()] == ['reply_j']
    server._finish_jobs(wait=True)        # the retry
    server.publisher.pump()
    acked = {t for c in consume.settled() for t in (
        range(1, c[1] + 1) if c[2] else (c[1],))}
    assert {tag, ping} <= acked
    assert sorted(c[1] for c in publish.published()) == ['reply_i',
                                                         'reply_j']
    assert server.dispatcher.runs['f'] == 1


def test_call_monitor_heartbeats_only_for_running_calls(loop):
    """A call with a timeout is owed heartbeats while it runs, not once it
    has finished; answered read-only requests waiting for their commit owe
    none (the loop looks only at the calls that do)."""
    server, _, publish = loop
    server.dispatcher.gate.clear()
    payload = envelope.build_request(
        'count', {'key': 'k', 'token': 'hb'}, msg_id='m-hb',
        reply_q='reply_hb', timeout=4, unique_id='hb-1')
    server._on_message(Delivery(next(server.tags), envelope.dumps(payload)))
    server._start_ready()
    for i in range(5):
        deliver(server, 'ping', reply_q='reply_p', unique_id='p-hb-%d' % i)
    finish(server, 5)      # the pings: answered, their outcomes committed
    assert list(server._beating) == ['hb-1']
    assert 0 < jobs_next_beat(server) <= 2.0
    server._beating['hb-1'].next_beat = time.monotonic()   # due now
    server._send_call_heartbeats()
    server.publisher.pump()
    beats = [reply_of(c) for c in publish.published()
             if c[1] == 'reply_hb']
    assert beats and beats[0]['ending'] is False
    server.dispatcher.gate.set()
    finish(server, 1)
    assert server._beating == {}
    assert reply_of(publish.published()[-1])['result'] == {'token': 'hb'}


def jobs_next_beat(server):
    from compute_agent.rpc import jobs
    return jobs.next_beat_in(server._beating.values())


def test_running_rows_only_for_requests_that_run_long(loop, monkeypatch):
    """A group commit writes no 'running' row for a request that is still
    in flight but started less than _RUNNING_FLUSH s ago (its outcome row
    follows in a moment: writing both doubled a burst's journal writes);
    one running longer gets its row, and a finished one never does."""
    server, consume, _ = loop
    real, written = server.journal.record, []

    def spy(**changes):
        written.append(sorted(r[0] for r in changes.get('running', ())))
        return real(**changes)
    server.journal.record = spy
    hold, dispatch = threading.Event(), server.dispatcher.dispatch

    def held(method, args, context):
        if args.get('token') == 'slow':
            hold.wait(10)
        return dispatch(method, args, context)
    server.dispatcher.dispatch = held
    deliver(server, 'count', {'key': 'a', 'token': 'slow'}, unique_id='r-1')
    deliver(server, 'count', {'key': 'b', 'token': 'fast'}, unique_id='r-2')
    deadline = time.monotonic() + 10
    while server._completions.qsize() < 1:
        assert time.monotonic() < deadline, 'r-2 did not complete'
        time.sleep(0.005)
    server._finish_jobs()                     # r-2's group commit
    server._committer.wait_idle()
    assert written == [[]]                    # r-1 started just now
    assert server.journal.lookup('r-1') is None
    assert server.journal.lookup('r-2')['status'] == 'done'
    clock = time.monotonic() + server_mod._RUNNING_FLUSH + 0.1
    monkeypatch.setattr(server_mod.time, 'monotonic', lambda: clock)
    server._finish_jobs()                     # r-1 is due now, alone
    server._committer.wait_idle()
    assert written[-1] == ['r-1']
    assert server.journal.lookup('r-1')['status'] == 'running'
    monkeypatch.undo()
    hold.set()
    finish(server, 1)
    assert server.journal.lookup('r-1')['status'] == 'done'
    assert server._running_rows == []
    assert server.dispatcher.runs == {'slow': 1, 'fast': 1}


def run_all(server, n):
    """Open the gate and turn the loop until ``n`` keyed requests have run
    and nothing is held or admitted."""
    server.dispatcher.gate.set()
    deadline = time.monotonic() + 10
    while len(server.dispatcher.order) < n or server._held or \
            server._admitted:
        assert time.monotonic() < deadline, server.dispatcher.order
        finish(server, 0)
        time.sleep(0.005)
    finish(server, 0)


def acked_tags(consume):
    return {t for c in consume.settled() if c[0] == 'ack'
            for t in (range(1, c[1] + 1) if c[2] else (c[1],))}


@pytest.mark.builds(1)
def test_state_changing_requests_past_the_bound_wait_decoded_in_order(loop):
    """One build worker admits two state-changing requests at once; the
    rest wait unvalidated, in arrival order, and so does anything behind
    them, an invalid one too. A read-only call is answered meanwhile; a
    copy of a held request joins it."""
    server, consume, publish = loop
    server.dispatcher.gate.clear()
    keys = ['k0', 'k1', 'k0', 'k2', 'k1']
    tags = [deliver(server, 'count', {'key': k, 'token': 't%d' % i},
                    unique_id='a%d' % i) for i, k in enumerate(keys)]
    tags.append(deliver(server, 'nosuch', {'token': 'bad'}, unique_id='a5'))
    tags.append(deliver(server, 'count', {'key': 'k2', 'token': 't6'},
                        unique_id='a6'))
    copy = deliver(server, 'count', {'key': 'k0', 'token': 't2'},
                   unique_id='a2', redelivered=True)
    bad_copy = deliver(server, 'nosuch', {'token': 'bad'}, unique_id='a5',
                       redelivered=True)
    assert server.dispatcher.validated == ['t0', 't1']
    assert [j.uid for j in server._held] == ['a2', 'a3', 'a4', 'a5', 'a6']
    assert server.stats['duplicates'] == 2
    ping = deliver(server, 'ping', reply_q='reply_p', unique_id='p-held')
    finish(server, 1)
    assert reply_of(publish.published()[0])['result'] == {'pong': True}
    assert consume.settled() == [('ack', ping, False)]
    run_all(server, 6)
    assert server.dispatcher.validated == [
        't0', 't1', 'ping', 't2', 't3', 't4', 'bad', 't6']
    order = server.dispatcher.order
    assert sorted(order) == ['t0', 't1', 't2', 't3', 't4', 't6']
    for first, then in (('t0', 't2'), ('t1', 't4'), ('t3', 't6')):
        assert order.index(first) < order.index(then)
    assert server.dispatcher.runs['t2'] == 1          # the copy joined it
    rejected = [c[1] for c in consume.settled() if c[0] == 'reject']
    assert rejected == [tags[5], bad_copy]       # both copies, once each
    assert set(tags) - {tags[5]} | {copy} <= acked_tags(consume)
    assert not server._held and server._inflight == {}


@pytest.mark.builds(1)
def test_held_requests_are_left_unacked_when_stopping(loop):
    """Stopping: held requests never start, nor does an admitted one no
    worker has taken; they leave the loop's books (so it does not wait for
    them) unacked, for redelivery. The running one finishes and is acked."""
    server, consume, _ = loop
    server.dispatcher.gate.clear()
    tags = [deliver(server, 'count', {'key': 'k%d' % i, 'token': 's%d' % i},
                    unique_id='s%d' % i) for i in range(4)]
    assert len(server._held) == 2
    server._stop.set()
    server._forget_unstarted()
    server._admit_held()
    assert list(server._inflight) == ['s0', 's1']      # admitted, running
    assert server.dispatcher.validated == ['s0', 's1']
    server.dispatcher.gate.set()
    finish(server, 1)
    server._forget_unstarted()            # s1, skipped by the worker
    assert server._inflight == {} and server._admitted == 0
    assert server.dispatcher.order == ['s0']
    assert acked_tags(consume) == {tags[0]}


@pytest.mark.builds(1)
def test_an_arrival_method_is_checked_at_once_and_still_waits_its_turn(loop):
    """A destroy's key() acts as it arrives (it cancels what its instance
    waits on): held, it is validated and keyed at once, and still runs
    after what came before it."""
    server, consume, _ = loop
    server.dispatcher.gate.clear()
    for i in range(3):
        deliver(server, 'count', {'key': 'k', 'token': 'c%d' % i},
                unique_id='c%d' % i)
    deliver(server, 'urgent', {'key': 'k', 'token': 'u'}, unique_id='u')
    assert server.dispatcher.validated == ['c0', 'c1', 'u']
    assert [j.uid for j in server._held] == ['c2', 'u']
    run_all(server, 4)
    assert server.dispatcher.order == ['c0', 'c1', 'c2', 'u']
    assert server.dispatcher.validated == ['c0', 'c1', 'u', 'c2']
