"""A RabbitMQ cluster node dies under the agent (issue 12, must-show 7).

A private 3-node cluster on loopback (rabbit_node.PrivateCluster: own node
names, ports and data dirs); the agent's queues are quorum queues (its
dead-letter queue too) and its ``transport_url`` names all three nodes.
A client publishes casts to a surviving node, with publisher confirms, at
a steady rate, while a node is SIGKILLed for 20 s and brought back: the
node leading the agent's queues (its dead-letter queue included) that the
agent is also connected to; the leader while the agent is connected to
another node; the agent's node while another one leads.

What is run: the agent's real RPC server, transport, topology, journal and
publisher, with the test double of the manager (rpc_fixtures.FakeDispatcher,
see there). Each cast is a ``spawn`` of its own uuid whose double counts
every run and publishes ``spawn.start``/``spawn.end`` reports, so both
consuming and publishing are exercised and every run is countable; a real
guest per cast (dozens a second) is beyond this machine. lost = confirmed
casts never run; run twice = casts run more than once. Both must be 0. The
share of the pre-kill rate served while the node was down is printed, not
asserted (a timing).
"""

import shutil
import tempfile
import threading
import time
import uuid as uuidlib

import kombu
import pytest

try:
    from tests.functional.rabbit_node import private_cluster  # noqa: F401
    from tests.functional.rpc_fixtures import (  # noqa: F401
        agents, make_conf, wait_for)
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rabbit_node import private_cluster  # noqa: F401
    from rpc_fixtures import agents, make_conf, wait_for  # noqa: F401

from compute_agent.rpc import envelope
from compute_agent.rpc import topology

pytestmark = [pytest.mark.rabbit, pytest.mark.slow, pytest.mark.timeout(600)]

RATE = 20            # casts per second
BEFORE_S = 8         # steady state measured before the kill
DOWN_S = 20          # the node stays down this long


class Sender(threading.Thread):
    """Publishes spawn casts to one node with confirms; a cast counts as
    sent once the broker confirmed it (until then it is published again,
    with the same ``_unique_id``)."""

    def __init__(self, node, conf):
        super().__init__(name='cluster-sender', daemon=True)
        self.url = 'amqp://guest:guest@localhost:%d/' % node.port
        self.conf = conf
        self.sent = []
        self.failures = 0
        self.stop_event = threading.Event()

    def _body(self, uuid):
        payload = envelope.build_request(
            'spawn', {'instance': {'uuid': uuid, 'name': 'vm-' + uuid[:8],
                                   'build_seconds': 0.02},
                      'image_meta': {'id': 'img'}},
            context={'request_id': 'req-' + uuid[:8]})
        return envelope.dumps(payload)

    def run(self):
        conn = None
        while not self.stop_event.is_set():
            uuid = str(uuidlib.uuid4())
            body = self._body(uuid)
            while not self.stop_event.is_set():
                try:
                    if conn is None:
                        conn = kombu.Connection(
                            self.url, connect_timeout=3,
                            transport_options={'confirm_publish': True})
                        producer = conn.Producer()
                    producer.publish(
                        body, exchange=self.conf.control_exchange,
                        routing_key='%s.%s' % (self.conf.rpc.topic,
                                               self.conf.host),
                        content_type='application/json',
                        content_encoding='utf-8', delivery_mode=2,
                        timeout=10)
                    self.sent.append((time.monotonic(), uuid))
                    break
                except Exception:  # noqa: BLE001 - publish it again
                    self.failures += 1
                    if conn is not None:
                        try:
                            conn.release()
                        except Exception:  # noqa: BLE001
                            pass
                    conn = None
                    time.sleep(0.2)
            self.stop_event.wait(1.0 / RATE)
        if conn is not None:
            conn.release()


def _queue_types(node):
    out = node.ctl('list_queues', '-q', '--no-table-headers', 'name',
                   'type').stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def _report_queue(node, conf):
    """A quorum queue on the state topic: reports survive the node loss."""
    name = 'reports-' + uuidlib.uuid4().hex[:8]
    with kombu.Connection('amqp://guest:guest@localhost:%d/' % node.port) as c:
        ch = c.channel()
        ch.exchange_declare(conf.control_exchange, 'topic', durable=True,
                            auto_delete=False)
        ch.queue_declare(name, durable=True, auto_delete=False,
                         arguments={'x-queue-type': 'quorum'})
        ch.queue_bind(name, conf.control_exchange,
                      routing_key=conf.rpc.state_topic)
    return name


def _drain_reports(node, queue):
    reports = []
    with kombu.Connection('amqp://guest:guest@localhost:%d/' % node.port) as c:
        ch = c.channel()
        ch.auto_decode = False
        while True:
            msg = ch.basic_get(queue, no_ack=True)
            if msg is None:
                return reports
            reports.append(envelope.loads(msg.body)['args'])


def _predeclare(node, conf):
    """Declare the agent's queues (dead-letter queue included) through
    ``node`` before the agent starts, so that node leads them."""
    with kombu.Connection('amqp://guest:guest@localhost:%d/' % node.port) as c:
        topology.declare(c.channel(), conf)
        assert topology.declare_dead(c, conf) is None


# killed: which node dies. "both": the agent is connected to the node that
# leads its queues (it declared them there); "leader": the agent is
# connected elsewhere; "connected": the leader is elsewhere.
@pytest.mark.parametrize('killed', ['both', 'leader', 'connected'])
def test_node_killed_nothing_lost_or_run_twice(
        private_cluster, agents, killed):  # noqa: F811
    cluster = private_cluster
    x, y, z = cluster.nodes        # z is never killed: the sender's node
    suffix, host = uuidlib.uuid4().hex[:8], 'host-' + uuidlib.uuid4().hex[:6]
    overrides = dict(rabbit_quorum_queue=True, amqp_durable_queues=True,
                     heartbeat=10)
    if killed == 'both':
        order, victim = [x, y, z], x
    else:
        tmp = tempfile.mkdtemp(prefix='ca-cluster-')
        _predeclare(x, make_conf(cluster.url_of([x]), tmp, suffix=suffix,
                                 host=host, **overrides))
        shutil.rmtree(tmp, ignore_errors=True)
        order, victim = [y, z, x], x if killed == 'leader' else y
    agent = agents(url=cluster.url_of(order), suffix=suffix, host=host,
                   **overrides)
    conf, names, disp = agent.conf, agent.names, agent.dispatcher
    types = _queue_types(z)
    for q in ('host_queue', 'topic_queue', 'dead_queue'):
        assert types.get(names[q]) == 'quorum', (q, types)
    assert cluster.leader_of(names['host_queue'], via=z) is x
    assert cluster.leader_of(names['dead_queue'], via=z) is x

    reports_q = _report_queue(z, conf)
    sender = Sender(z, conf)
    sender.start()

    def ran():
        with disp.lock:
            return sum(disp.runs.values())

    wait_for(lambda: ran() >= RATE, timeout=30, message='steady state')
    start_count, start = ran(), time.monotonic()
    time.sleep(BEFORE_S)
    before_count, killed_at = ran(), time.monotonic()
    victim.kill()
    resumed = None      # when casts run again (a few may be in hand)
    while time.monotonic() - killed_at < DOWN_S:
        if resumed is None and ran() > before_count + 3:
            resumed = time.monotonic() - killed_at
        time.sleep(0.1)
    down_count, back_at = ran(), time.monotonic()
    victim.start()
    time.sleep(3)
    sender.stop_event.set()
    sender.join(30)

    sent = [u for _, u in sender.sent]
    wait_for(lambda: all(disp.runs[u] for u in sent), timeout=120,
             message='every confirmed cast ran')
    wait_for(lambda: agent.journal.outbox_count() == 0, timeout=60,
             message='outbox flushed')
    time.sleep(2)       # a duplicate delivery would run by now
    with disp.lock:
        lost = [u for u in sent if disp.runs[u] == 0]
        twice = [u for u in sent if disp.runs[u] > 1]
    rate_before = (before_count - start_count) / (killed_at - start)
    rate_down = (down_count - before_count) / (back_at - killed_at)
    print('\nnode kill (%s): sent %d (confirmed), lost %d, run twice %d, '
          'publish retries %d, agent reconnects %d' % (
              killed, len(sent), len(lost), len(twice), sender.failures,
              agent.server.stats['reconnects']))
    print('rate before the kill %.1f/s, while the node was down %.1f/s: '
          '%.0f%% (target >= 50%%); serving again %s after the kill' % (
              rate_before, rate_down,
              100.0 * rate_down / rate_before if rate_before else 0,
              'never' if resumed is None else '%.1fs' % resumed))
    assert lost == [] and twice == [], (len(lost), len(twice))

    # Publishing went on too: every spawn's end was reported.
    reports = _drain_reports(z, reports_q)
    ended = {r['instance_uuid'] for r in reports if r['event'] == 'spawn.end'}
    assert not set(sent) - ended, len(set(sent) - ended)
    assert agent.server.healthy()
    agent.stop()
    with kombu.Connection('amqp://guest:guest@localhost:%d/' % z.port) as c:
        c.channel().queue_delete(reports_q)
