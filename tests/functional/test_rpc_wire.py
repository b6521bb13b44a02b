"""The RPC server on a real RabbitMQ, driven by stock oslo.messaging.

Needs a broker at $COMPUTE_AGENT_TEST_TRANSPORT_URL (default the local
one); skips without it, fails in CI. Each test uses its own exchange, topics
and host, and deletes them afterwards. The server talks to the test double
``FakeDispatcher`` (rpc_fixtures.py), not the real manager.
"""

import json
import time
import uuid

import kombu
import oslo_messaging
import pytest

try:
    from tests.functional.rpc_fixtures import (  # noqa: F401
        agents, kombu_url, oslo_client, oslo_transport, wait_for)
    from tests.functional.rpc_helpers import (
        SECRET_PW, SECRET_TOKEN, ReplyQueue, StateCollector, get_all,
        make_instance, publish_raw, queue_depth, raw_request)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rpc_fixtures import (  # noqa: F401
        agents, kombu_url, oslo_client, oslo_transport, wait_for)
    from rpc_helpers import (
        SECRET_PW, SECRET_TOKEN, ReplyQueue, StateCollector, get_all,
        make_instance, publish_raw, queue_depth, raw_request)

from compute_agent.rpc import client as client_mod
from compute_agent.rpc import envelope

pytestmark = [pytest.mark.rabbit]

# ------------------------------------------------------ (1) oslo client

def test_oslo_call_and_cast(agents, oslo_transport):
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf)
    ctxt = {'request_id': 'req-1', 'user_id': 'u', 'auth_token': SECRET_TOKEN}
    pong = client.call(ctxt, 'ping')
    assert pong['host'] == agent.conf.host
    assert client.call(ctxt, 'echo', a=1, b=[1, 'x']) == {'a': 1,
                                                          'b': [1, 'x']}
    client.cast(ctxt, 'work', token='cast-1')
    wait_for(lambda: agent.dispatcher.runs['cast-1'] == 1)
    # The context reaches the dispatcher unflattened.
    assert agent.dispatcher.contexts[0]['request_id'] == 'req-1'
    # A stock client with a version in its target.
    v1 = client.prepare(version='1.0')
    assert v1.call(ctxt, 'ping')['host'] == agent.conf.host


def test_state_reports_reach_an_oslo_server(agents, oslo_transport):
    agent = agents()
    collector = StateCollector(agent.conf, oslo_transport)
    try:
        client = oslo_client(oslo_transport, agent.conf)
        inst = make_instance()
        ctxt = {'request_id': 'req-spawn', 'auth_token': SECRET_TOKEN}
        record = client.call(ctxt, 'spawn', instance=inst,
                             image_meta={'id': 'img'},
                             admin_password=SECRET_PW)
        assert record['vm_state'] == 'active'
        wait_for(lambda: len(collector.events(inst['uuid'])) == 2,
                 message='two reports')
        (_, c1, a1), (_, c2, a2) = collector.events(inst['uuid'])
        assert [a1['event'], a2['event']] == ['spawn.start', 'spawn.end']
        assert a1['sequence'] < a2['sequence']
        assert (a2['vm_state'], a2['task_state'], a2['power_state']) == (
            'active', None, 1)
        assert a1['host'] == agent.conf.host
        assert a1['request_id'] == 'req-spawn'
        assert c1['request_id'] == 'req-spawn'
        assert 'auth_token' not in c1 and 'auth_token' not in c2
    finally:
        collector.stop()


def test_our_client_and_watcher(agents):
    agent = agents()
    conf = agent.conf
    with client_mod.AgentClient(conf.transport_url, conf.host,
                                topic=conf.rpc.topic,
                                exchange=conf.control_exchange,
                                state_topic=conf.rpc.state_topic,
                                timeout=10) as client:
        assert client.ping()['host'] == conf.host
        inst = make_instance()
        watcher = client.open_watch(inst['uuid'])
        try:
            client.cast('spawn', instance=inst, image_meta={'id': 'i'})
            events = [watcher.get(timeout=10) for _ in range(2)]
        finally:
            watcher.stop()
        assert [e[1]['event'] for e in events] == ['spawn.start', 'spawn.end']
        assert client.get_info(inst['uuid'])['vm_state'] == 'active'
        with pytest.raises(client_mod.RemoteError) as err:
            client.get_info(str(uuid.uuid4()))
        assert err.value.exc_type == 'InstanceNotFound'
        with pytest.raises(client_mod.Unroutable):
            client.call('ping', host='no-such-host', timeout=5)


# ------------------------------------------------------ (2) failures

def test_failure_reply_is_remote_error(agents, oslo_transport):
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf)
    with pytest.raises(oslo_messaging.RemoteError) as err:
        client.call({}, 'fail', cls='InstanceNotFound', uuid='abc')
    assert err.value.exc_type == 'InstanceNotFound'
    assert 'abc' in err.value.value
    # An unexpected builtin exception keeps its class: oslo re-raises
    # builtins as themselves (RuntimeError_Remote).
    with pytest.raises(RuntimeError, match='boom'):
        client.call({}, 'fail', cls='unexpected')
    # The server survives both.
    assert client.call({}, 'ping')['host'] == agent.conf.host


def test_unsupported_version_and_invalid_requests(agents, oslo_transport):
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf)
    for version in ('2.0', '1.2', '0.9'):
        with pytest.raises(oslo_messaging.RemoteError) as err:
            client.prepare(version=version).call({}, 'ping')
        assert err.value.exc_type == 'UnsupportedVersion', version
    with pytest.raises(oslo_messaging.RemoteError) as err:
        client.call({}, 'no_such_method')
    assert err.value.exc_type == 'InvalidRequest'
    # A cast that fails validation is dead-lettered.
    client.prepare(version='7.0').cast({}, 'ping')
    dead = get_all(agent.conf, agent.names['dead_queue'])
    assert len(dead) == 1
    assert envelope.loads(dead[0])['version'] == '7.0'


def test_invalid_request_reports_error_and_creates_nothing(agents,
                                                           oslo_transport):
    agent = agents()
    collector = StateCollector(agent.conf, oslo_transport)
    try:
        client = oslo_client(oslo_transport, agent.conf)
        inst = make_instance()
        del inst['name']
        with pytest.raises(oslo_messaging.RemoteError) as err:
            client.call({'request_id': 'req-bad'}, 'spawn', instance=inst,
                        image_meta={'id': 'i'})
        assert err.value.exc_type == 'InvalidRequest'
        assert 'instance.name' in err.value.value
        client.cast({'request_id': 'req-bad2'}, 'spawn', instance=inst,
                    image_meta={'id': 'i'})
        wait_for(lambda: len(collector.events(inst['uuid'])) == 2)
        for _, ctxt, args in collector.events(inst['uuid']):
            assert ctxt['request_id'] in ('req-bad', 'req-bad2')
            assert args['event'] == 'spawn.error'
            assert args['vm_state'] == 'error'
            assert args['error']['class'] == 'InvalidRequest'
        assert len(get_all(agent.conf, agent.names['dead_queue'])) == 1
        with pytest.raises(oslo_messaging.RemoteError) as err:
            client.call({}, 'get_info', instance_uuid=inst['uuid'])
        assert err.value.exc_type == 'InstanceNotFound'
    finally:
        collector.stop()


# ------------------------------------------------------ (3) dedup

def test_same_message_twice_runs_once_also_across_restart(agents):
    agent = agents()
    conf = agent.conf
    cast = raw_request('work', token='dup-cast')
    publish_raw(conf, cast)
    publish_raw(conf, cast)
    replies = ReplyQueue(conf)
    try:
        call = raw_request('work', reply_q=replies.name, token='dup-call')
        publish_raw(conf, call)
        publish_raw(conf, call)
        # One reply per delivery, or one for both if the second arrived
        # while the first ran (same _msg_id: the caller needs one).
        got = replies.get(2, timeout=3)
        assert got and all(r['result'] == {'token': 'dup-call'} for r in got)
        assert all(r['ending'] and r['failure'] is None for r in got)
        wait_for(lambda: agent.server.stats['received'] == 4)
        # Four deliveries settle as two to four jobs: a copy that arrives
        # while the first runs, or while the outcome of this read-only
        # (keyless) request waits to be recorded, joins it instead of
        # completing on its own.
        wait_for(lambda: agent.server.stats['completed'] >= 2
                 and not agent.server._inflight)
        assert agent.dispatcher.runs == {'dup-cast': 1, 'dup-call': 1}
        agent.restart()
        publish_raw(conf, cast)
        publish_raw(conf, call)
        assert replies.get(1)[0]['result'] == {'token': 'dup-call'}
        wait_for(lambda: agent.server.stats['completed'] == 2)
        assert agent.dispatcher.runs == {}
        agent.stop()
        assert queue_depth(conf, agent.names['host_queue']) == 0
    finally:
        replies.close()


def test_duplicate_while_running_waits_for_the_first(agents):
    agent = agents()
    conf = agent.conf
    replies = ReplyQueue(conf)
    try:
        call = raw_request('work', reply_q=replies.name, token='slow',
                            key='k', seconds=1.5)
        publish_raw(conf, call)
        wait_for(lambda: agent.dispatcher.runs['slow'] == 1)
        publish_raw(conf, call)
        got = replies.get(2, timeout=4)
        assert len(got) == 1 and got[0]['result'] == {'token': 'slow'}
        assert agent.dispatcher.runs['slow'] == 1
        assert agent.server.stats['duplicates'] == 1
        agent.stop()
        assert queue_depth(conf, agent.names['host_queue']) == 0
    finally:
        replies.close()


def test_reply_waits_for_a_late_reply_queue(agents):
    agent = agents(reply_timeout=3)
    conf = agent.conf
    late = 'reply_' + uuid.uuid4().hex
    publish_raw(conf, raw_request('work', reply_q=late, token='late',
                                   key='k'))
    wait_for(lambda: agent.server.stats['completed'] == 1)
    time.sleep(0.5)   # the reply bounced at least once by now
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        ch = c.channel()
        ch.queue_declare(late, exclusive=True, auto_delete=True)
        end = time.monotonic() + 5
        msg = None
        while msg is None and time.monotonic() < end:
            msg = ch.basic_get(late, no_ack=True)
            time.sleep(0.05)
    assert msg is not None
    assert envelope.loads(msg.body)['result'] == {'token': 'late'}
    wait_for(lambda: agent.journal.outbox_count() == 0)
    # A reply whose queue never appears is abandoned after reply_timeout.
    publish_raw(conf, raw_request('work', reply_q='reply_never', token='n',
                                   key='k'))
    wait_for(lambda: agent.journal.outbox_count() == 1)
    wait_for(lambda: agent.journal.outbox_count() == 0, timeout=10)
    assert agent.server.healthy()


# ------------------------------------------------------ (4) poison

@pytest.mark.parametrize('body', [
    b'not json at all',
    b'\xff\xfe binary',
    json.dumps({'oslo.version': '3.0', 'oslo.message': '{}'}).encode(),
    json.dumps({'oslo.version': '2.0', 'oslo.message': 'nope'}).encode(),
    envelope.dumps({'args': {}, '_unique_id': 'x'}),
    b'[1, 2, 3]',
])
def test_poison_message_is_dead_lettered(agents, oslo_transport, body):
    agent = agents()
    publish_raw(agent.conf, body)
    dead = get_all(agent.conf, agent.names['dead_queue'])
    assert dead == [body]
    client = oslo_client(oslo_transport, agent.conf)
    assert client.call({}, 'ping')['host'] == agent.conf.host


def test_old_style_plain_body_is_served(agents):
    agent = agents()
    replies = ReplyQueue(agent.conf)
    try:
        payload = envelope.build_request('echo', {'x': 1},
                                         msg_id='m1', reply_q=replies.name)
        publish_raw(agent.conf, json.dumps(payload).encode())
        assert replies.get(1)[0]['result'] == {'x': 1}
    finally:
        replies.close()
