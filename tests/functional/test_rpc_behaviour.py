"""Server behaviour on a real RabbitMQ: routing between hosts, ordering,
call-monitor and AMQP heartbeats, graceful stop, secrets in logs, queue
declarations. Same setup as test_rpc_wire.py (FakeDispatcher test double).
"""

import logging
import os
import shutil
import subprocess
import threading
import time
import uuid

import kombu
import pytest

try:
    from tests.functional.rpc_fixtures import (  # noqa: F401
        agents, broker_url, kombu_url, oslo_client, oslo_transport, wait_for)
    from tests.functional.rpc_helpers import (
        SECRET_PW, SECRET_TOKEN, get_all, make_instance, publish_raw, queue_depth,
        raw_request)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rpc_fixtures import (  # noqa: F401
        agents, broker_url, kombu_url, oslo_client, oslo_transport, wait_for)
    from rpc_helpers import (
        SECRET_PW, SECRET_TOKEN, get_all, make_instance, publish_raw, queue_depth,
        raw_request)

from compute_agent.rpc import client as client_mod

pytestmark = [pytest.mark.rabbit]

# ------------------------------------------------------ (6) two hosts

def test_targeted_and_fanout_casts_with_two_hosts(agents, oslo_transport):
    """Instance methods only through <topic>.<host>; through the fanout or
    the shared <topic> queue only ping, get_host_stats and list_instances
    are served (docs: protocol-delivery), the rest is refused unrun."""
    suffix = uuid.uuid4().hex[:8]
    a = agents(suffix=suffix, host='host-a-' + suffix)
    b = agents(suffix=suffix, host='host-b-' + suffix)
    to_a = oslo_client(oslo_transport, a.conf)
    to_b = oslo_client(oslo_transport, b.conf)
    to_a.cast({}, 'work', token='only-a')
    to_b.cast({}, 'work', token='only-b')
    to_a.prepare(fanout=True).cast({'request_id': 'everyone'},
                                   'list_instances')
    any_host = oslo_client(oslo_transport, a.conf, server='')
    any_host.cast({'request_id': 'anyone'}, 'list_instances')
    to_a.prepare(fanout=True).cast({}, 'work', token='fanout-work')
    any_host.cast({}, 'work', token='shared-work')

    def ran(handle, request_id):
        with handle.dispatcher.lock:
            return sum(1 for c in handle.dispatcher.contexts
                       if c.get('request_id') == request_id)
    wait_for(lambda: ran(a, 'everyone') == 1 and ran(b, 'everyone') == 1)
    wait_for(lambda: ran(a, 'anyone') + ran(b, 'anyone') == 1)
    # Three refusals (the fanout reaches both hosts) are dead-lettered.
    wait_for(lambda: a.server.stats['invalid'] + b.server.stats['invalid']
             == 3, message='3 refusals')
    time.sleep(0.3)
    assert a.dispatcher.runs['only-a'] == 1 and b.dispatcher.runs[
        'only-a'] == 0
    assert b.dispatcher.runs['only-b'] == 1 and a.dispatcher.runs[
        'only-b'] == 0
    assert ran(a, 'anyone') + ran(b, 'anyone') == 1
    for handle in (a, b):
        assert handle.dispatcher.runs['fanout-work'] == 0
        assert handle.dispatcher.runs['shared-work'] == 0


# ------------------------------------------------------ ordering

def test_same_key_runs_in_order_one_at_a_time(agents, oslo_transport):
    agent = agents(prefetch_count=64)
    client = oslo_client(oslo_transport, agent.conf)
    for i in range(8):
        for key in ('k1', 'k2', 'k3'):
            client.cast({}, 'work', token='%s-%d' % (key, i), key=key,
                        seconds=0.05)
    wait_for(lambda: sum(agent.dispatcher.runs.values()) == 24, timeout=20)
    for key in ('k1', 'k2', 'k3'):
        assert agent.dispatcher.order[key] == ['%s-%d' % (key, i)
                                               for i in range(8)]
        assert agent.dispatcher.max_active[key] == 1
    wait_for(lambda: agent.server.stats['completed'] == 24)


def test_keyless_requests_do_not_wait_for_busy_workers(agents,
                                                       oslo_transport):
    """Nor behind the requests waiting for admission: with 4 build workers
    busy and 4 requests admitted behind them, 4 more are held (decoded,
    not yet validated: rpc/server.py) and a ping still answers at once;
    the held ones then run, each instance's in order."""
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf)
    for i in range(4):  # every build worker busy
        client.cast({}, 'work', token='busy-%d' % i, key='b%d' % i,
                    seconds=5)
    for i in range(8):  # 4 admitted (2 per worker), 4 held
        client.cast({}, 'work', token='q-%d' % i, key='q%d' % (i % 2))
    wait_for(lambda: sum(agent.dispatcher.active.values()) == 4
             and len(agent.server._held) == 4)
    assert client.call({}, 'ping')['host'] == agent.conf.host
    # Answered while all four were still running: it did not queue behind.
    assert sum(agent.dispatcher.active.values()) == 4
    assert len(agent.server._held) == 4
    wait_for(lambda: sum(agent.dispatcher.runs.values()) == 12, timeout=20)
    for k in (0, 1):
        assert agent.dispatcher.order['q%d' % k] == [
            'q-%d' % i for i in range(k, 8, 2)]


# ------------------------------------------------------ (7) call monitor

def test_call_monitor_heartbeats_keep_a_slow_call_alive(agents,
                                                        oslo_transport):
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf, timeout=30,
                         call_monitor_timeout=2)
    # 5 s of work behind a 2 s call monitor: only the heartbeats keep it alive.
    assert client.call({}, 'sleep', seconds=5) == {'slept': 5}


def test_long_operation_keeps_the_connection(agents):
    agent = agents(heartbeat=4)
    conf = agent.conf
    with client_mod.AgentClient(conf.transport_url, conf.host,
                                topic=conf.rpc.topic,
                                exchange=conf.control_exchange,
                                timeout=6) as client:
        assert client.call('sleep', seconds=15, key='long') == {'slept': 15}
    assert agent.server.stats['reconnects'] == 0
    assert agent.server.healthy()


# ------------------------------------------------------ stop

def test_graceful_stop_finishes_or_leaves_for_redelivery(agents):
    agent = agents()
    conf = agent.conf
    publish_raw(conf, raw_request('work', token='short', key='a',
                                   seconds=1))
    publish_raw(conf, raw_request('work', token='long', key='b',
                                   seconds=6))
    wait_for(lambda: agent.dispatcher.runs['long'] == 1)
    agent.server.stop(graceful_timeout=2)
    # stop() returned at the deadline, not after 'long' finished.
    assert agent.dispatcher.active['b'] == 1
    assert not agent.server.healthy()
    # 'short' finished and was acked; 'long' was left for redelivery.
    assert queue_depth(conf, agent.names['host_queue']) == 1
    agent.journal.close()
    agent.start()
    wait_for(lambda: agent.dispatcher.runs['long'] == 1, timeout=15)
    assert agent.dispatcher.runs['short'] == 0


# ------------------------------------------------------ secrets in logs

def test_secrets_never_logged(agents, oslo_transport, caplog):
    caplog.set_level(logging.DEBUG)
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf)
    ctxt = {'request_id': 'req-s', 'auth_token': SECRET_TOKEN}
    inst = make_instance()
    client.call(ctxt, 'spawn', instance=inst, image_meta={'id': 'i'},
                admin_password=SECRET_PW)
    bad = dict(inst, name=None)
    client.cast(ctxt, 'spawn', instance=bad, image_meta={'id': 'i'},
                admin_password=SECRET_PW)
    client.cast(ctxt, 'rescue_me', rescue_password=SECRET_PW)
    publish_raw(agent.conf, b'{"admin_password": "%s"' % SECRET_PW.encode())
    get_all(agent.conf, agent.names['dead_queue'], expect=3)
    text = '\n'.join(r.getMessage() for r in caplog.records
                     if r.name.startswith('compute_agent'))
    assert 'spawn' in text
    assert SECRET_TOKEN not in text and SECRET_PW not in text


def test_concurrent_callers(agents, oslo_transport):
    agent = agents()
    client = oslo_client(oslo_transport, agent.conf)
    errors = []

    def caller(n):
        try:
            for i in range(20):
                assert client.call({}, 'echo', n=n, i=i) == {'n': n, 'i': i}
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


# ------------------------------------------------------ declarations

def _queue_args(name):
    out = subprocess.run(['rabbitmqctl', 'list_queues', '-q', 'name',
                          'durable', 'arguments'], capture_output=True,
                         text=True, timeout=60)
    for line in out.stdout.splitlines():
        if line.split('\t')[0] == name:
            return line
    return None


@pytest.mark.skipif(not shutil.which('rabbitmqctl') and not os.environ.get('CI'),
                    reason='no rabbitmqctl (in CI a missing one fails)')
def test_quorum_mode_declarations(agents, oslo_transport):
    agent = agents(rabbit_quorum_queue=True, rabbit_delivery_limit=3)
    assert oslo_client(oslo_transport, agent.conf).call({}, 'ping')
    host_q = _queue_args(agent.names['host_queue'])
    assert 'quorum' in host_q and 'x-delivery-limit' in host_q
    assert agent.names['dlx'] in host_q and '\ttrue\t' in host_q
    fanout_q = _queue_args(agent.names['fanout_queue'])
    assert 'quorum' not in fanout_q and '\tfalse\t' in fanout_q
    assert 'x-expires' in fanout_q


def test_quorum_delivery_limit_ends_a_redelivery_loop(agents):
    """Work that never finishes before the agent stops comes back after
    every restart; with a delivery limit it lands in ``<topic>.dead``
    instead of running forever, and the agent serves on."""
    limit = 2
    agent = agents(rabbit_quorum_queue=True, rabbit_delivery_limit=limit)
    conf, dead = agent.conf, agent.names['dead_queue']
    publish_raw(conf, raw_request('work', token='endless', seconds=10))
    runs = 0
    while True:     # each round: a new agent gets it again, or it is dead
        wait_for(lambda: agent.dispatcher.runs['endless'] == 1
                 or queue_depth(conf, dead) == 1, timeout=15)
        if agent.dispatcher.runs['endless'] == 0:
            break
        runs += 1
        assert runs <= limit + 1, 'delivered again past the delivery limit'
        agent.server.stop(graceful_timeout=0.2)   # unacked: comes back
        agent.journal.close()
        agent.start()
    assert runs == limit + 1
    assert queue_depth(conf, agent.names['host_queue']) == 0
    publish_raw(conf, raw_request('work', token='next'))
    wait_for(lambda: agent.dispatcher.runs['next'] == 1)


def test_conflicting_declaration_is_retried_until_fixed(agents):
    suffix = uuid.uuid4().hex[:8]
    topic, host = 'compute-' + suffix, 'host-' + suffix
    with kombu.Connection(kombu_url(broker_url())) as c:
        # Someone declared the agent's queue with other flags: 406.
        c.channel().queue_declare('%s.%s' % (topic, host), durable=False,
                                  auto_delete=False)
    agent = agents(suffix=suffix, host=host, wait_ready=False)
    time.sleep(1.5)
    assert not agent.server.ready.is_set() and not agent.server.healthy()
    with kombu.Connection(kombu_url(broker_url())) as c:
        c.channel().queue_delete('%s.%s' % (topic, host))
    assert agent.server.ready.wait(10)
    assert agent.server.healthy()
