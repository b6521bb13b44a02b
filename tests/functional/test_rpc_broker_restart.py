"""Broker restarts in the middle of a burst of casts.

Runs against a private RabbitMQ node (rabbit_node.py) so restarting it does
not disturb other tests sharing the machine's broker. Every request must run
exactly once and every final state report must arrive.
"""

import json
import time
import uuid

import kombu
import pytest

try:
    from tests.functional.rabbit_node import private_broker  # noqa: F401
    from tests.functional.rpc_fixtures import agents, kombu_url, wait_for  # noqa: F401
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rabbit_node import private_broker  # noqa: F401
    from rpc_fixtures import agents, kombu_url, wait_for  # noqa: F401

from compute_agent.rpc import envelope

pytestmark = [pytest.mark.rabbit, pytest.mark.slow]

BURST = 200


def _publish_burst(conf, uuids):
    """Publish the casts with publisher confirms: all are in the queue."""
    with kombu.Connection(kombu_url(conf.transport_url),
                          transport_options={'confirm_publish': True}) as c:
        producer = c.Producer()
        for u in uuids:
            payload = envelope.build_request(
                'spawn', {'instance': {'uuid': u, 'name': 'vm-' + u[:8],
                                       'build_seconds': 0.1},
                          'image_meta': {'id': 'img'}},
                context={'request_id': 'req-' + u[:8]})
            producer.publish(envelope.dumps(payload),
                             exchange=conf.control_exchange,
                             routing_key='%s.%s' % (conf.rpc.topic,
                                                    conf.host),
                             content_type='application/json',
                             content_encoding='utf-8', delivery_mode=2)


def _report_queue(conf):
    """A durable queue counting reports across broker restarts (the control
    exchange is durable in these tests, so its binding survives too)."""
    name = 'reports-' + uuid.uuid4().hex[:8]
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        ch = c.channel()
        ch.exchange_declare(conf.control_exchange, 'topic', durable=True,
                            auto_delete=False)
        ch.queue_declare(name, durable=True, auto_delete=False)
        ch.queue_bind(name, conf.control_exchange,
                      routing_key=conf.rpc.state_topic)
    return name


def _drain_reports(conf, queue):
    reports = []
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        ch = c.channel()
        ch.auto_decode = False
        while True:
            msg = ch.basic_get(queue, no_ack=True)
            if msg is None:
                return reports
            reports.append(envelope.loads(msg.body))


@pytest.mark.parametrize('restart', ['app', 'node'])
def test_broker_restart_mid_burst(private_broker, agents, restart):  # noqa: F811
    # 200 x 0.1 s on 4 workers: ~5 s of work, with at most 16 messages in
    # hand per queue, so the restart lands mid-burst.
    agent = agents(url=private_broker.url, amqp_durable_queues=True,
                   heartbeat=10, prefetch_count=16)
    conf = agent.conf
    queue = _report_queue(conf)
    uuids = [str(uuid.uuid4()) for _ in range(BURST)]
    _publish_burst(conf, uuids)
    disp = agent.dispatcher
    wait_for(lambda: sum(disp.runs.values()) >= BURST // 4, timeout=30,
             message='a quarter of the burst done')
    if restart == 'app':
        private_broker.stop_app()
        time.sleep(1)
        private_broker.start_app()
    else:
        private_broker.stop()
        time.sleep(1)
        private_broker.start()
    assert sum(disp.runs.values()) < BURST, 'restart came too late'
    wait_for(lambda: agent.server.stats['reconnects'] >= 1, timeout=30)
    wait_for(lambda: all((agent.journal.get_instance(u) or {}).get(
        'vm_state') == 'active' for u in uuids), timeout=120,
        message='every spawn finished')
    wait_for(lambda: agent.journal.outbox_count() == 0, timeout=60,
             message='outbox flushed')
    assert all(disp.runs[u] == 1 for u in uuids), \
        [u for u in uuids if disp.runs[u] != 1]
    wait_for(lambda: agent.server.healthy(), timeout=10)

    reports = _drain_reports(conf, queue)
    final = {r['args']['instance_uuid'] for r in reports
             if r['args']['event'] == 'spawn.end'}
    missing = set(uuids) - final
    assert not missing, [(u, [r['args']['event'] for r in reports
                              if r['args']['instance_uuid'] == u],
                          agent.journal.get_instance(u))
                         for u in sorted(missing)]
    # Duplicates (a report whose confirm was lost) carry the same sequence.
    seen = {(r['args']['instance_uuid'], r['args']['sequence'])
            for r in reports}
    assert len(seen) == 2 * BURST
    agent.stop()
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        ch = c.channel()
        assert ch.queue_declare(agent.names['host_queue'],
                                passive=True).message_count == 0
        assert ch.queue_declare(agent.names['dead_queue'],
                                passive=True).message_count == 0
        ch.queue_delete(queue)


def test_reports_made_while_the_broker_is_down_are_sent_later(
        private_broker, agents):  # noqa: F811
    agent = agents(url=private_broker.url, amqp_durable_queues=True)
    conf = agent.conf
    queue = _report_queue(conf)
    private_broker.stop_app()
    wait_for(lambda: not agent.server.healthy(), timeout=20)
    for i in range(5):
        agent.notifier.instance_state_changed(
            {'request_id': 'r%d' % i}, instance_uuid='u', vm_state='active',
            task_state=None, power_state=1, event='power.sync', sequence=i)
    assert agent.journal.outbox_count() == 5
    private_broker.start_app()
    wait_for(lambda: agent.journal.outbox_count() == 0, timeout=30)
    reports = _drain_reports(conf, queue)
    assert [r['args']['sequence'] for r in reports] == list(range(5))
    assert json.dumps(reports).count('auth_token') == 0
