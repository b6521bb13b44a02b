"""Raw AMQP helpers for the RPC functional tests.

Hand-made messages (publish_raw, ReplyQueue), queue inspection (get_all,
queue_depth), and a stock oslo.messaging RPC server on the state topic
collecting reports (StateCollector). The oslo client and transport are
fixtures in rpc_fixtures.py.
"""

import threading
import time
import uuid as uuidlib

import kombu

from compute_agent.rpc import envelope

try:
    from tests.functional.rpc_fixtures import kombu_url
except ImportError:  # tests/ is not a package: pytest put this dir on sys.path
    from rpc_fixtures import kombu_url

SECRET_TOKEN = 'tok-SECRET-0123'
SECRET_PW = 'pw-SECRET-4567'


def make_instance(name='vm1', **extra):
    inst = {'uuid': str(uuidlib.uuid4()), 'name': name,
            'flavor': {'memory_mb': 64, 'vcpus': 1, 'root_gb': 0}}
    inst.update(extra)
    return inst


def raw_request(method, reply_q=None, unique_id=None, **args):
    """A request body as a sender would publish it (envelope 2.0)."""
    payload = envelope.build_request(
        method, args, context={'request_id': 'req-raw'},
        msg_id=uuidlib.uuid4().hex if reply_q else None, reply_q=reply_q,
        unique_id=unique_id)
    return envelope.dumps(payload)


# ------------------------------------------------------------ raw AMQP access

def publish_raw(conf, body, routing_key=None, exchange=None, **props):
    """Publish bytes as an oslo client would (persistent, JSON)."""
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        ch = c.channel()
        msg = ch.prepare_message(body, content_type='application/json',
                                 content_encoding='utf-8',
                                 properties=dict(delivery_mode=2, **props))
        ch.basic_publish(msg, exchange=conf.control_exchange
                         if exchange is None else exchange,
                         routing_key=routing_key or '%s.%s' % (
                             conf.rpc.topic, conf.host))


def get_all(conf, queue, timeout=5, expect=1):
    """Bodies taken (and acked) from ``queue``; waits for ``expect``."""
    bodies = []
    end = time.monotonic() + timeout
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        ch = c.channel()
        ch.auto_decode = False
        while time.monotonic() < end:
            msg = ch.basic_get(queue, no_ack=True)
            if msg is None:
                if len(bodies) >= expect:
                    break
                time.sleep(0.05)
                continue
            bodies.append(msg.body)
    return bodies


def queue_depth(conf, queue):
    with kombu.Connection(kombu_url(conf.transport_url)) as c:
        return c.channel().queue_declare(queue, passive=True).message_count


class ReplyQueue:
    """An exclusive reply queue for hand-made calls."""

    def __init__(self, conf):
        self.conn = kombu.Connection(kombu_url(conf.transport_url))
        self.ch = self.conn.channel()
        self.name = 'reply_' + uuidlib.uuid4().hex
        self.ch.queue_declare(self.name, exclusive=True, auto_delete=True)

    def get(self, n=1, timeout=10):
        from compute_agent.rpc import envelope
        out = []
        end = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < end:
            msg = self.ch.basic_get(self.name, no_ack=True)
            if msg is None:
                time.sleep(0.02)
                continue
            out.append(envelope.loads(msg.body))
        return out

    def close(self):
        self.conn.release()


class StateCollector:
    """An oslo.messaging RPC server on the state topic: what a scheduler
    built on oslo.messaging would run. Collects every report."""

    def __init__(self, conf, transport):
        import oslo_messaging
        self.reports = []
        self.lock = threading.Lock()
        collector = self

        class Endpoint:
            def instance_state_changed(self, ctxt, **kwargs):
                with collector.lock:
                    collector.reports.append(('instance_state_changed',
                                              dict(ctxt), kwargs))

            def host_state_update(self, ctxt, **kwargs):
                with collector.lock:
                    collector.reports.append(('host_state_update',
                                              dict(ctxt), kwargs))

        target = oslo_messaging.Target(topic=conf.rpc.state_topic,
                                       server='scheduler-test',
                                       exchange=conf.control_exchange)
        # No executor argument: oslo 18 deprecates it; without eventlet's
        # monkey-patching the default is 'threading'.
        self.server = oslo_messaging.get_rpc_server(
            transport, target, [Endpoint()])
        self.server.start()
        self.conf = conf

    def events(self, uuid=None):
        with self.lock:
            return [r for r in self.reports if r[0] == 'instance_state_changed'
                    and (uuid is None or r[2].get('instance_uuid') == uuid)]

    def stop(self):
        self.server.stop()
        self.server.wait()
        with kombu.Connection(kombu_url(self.conf.transport_url)) as c:
            ch = c.channel()
            for q in (self.conf.rpc.state_topic,
                      self.conf.rpc.state_topic + '.scheduler-test'):
                try:
                    ch.queue_delete(q)
                except Exception:  # noqa: BLE001
                    ch = c.channel()
