"""A small client for Python schedulers (no oslo.messaging needed).

Speaks the same wire format as oslo.messaging's RPCClient (docs: protocol-envelope):
casts and calls to ``<topic>.<host>``, fanout casts, replies on an
exclusive ``reply_<uuid>`` queue, call-monitor heartbeats (``ending:
false``) extending the wait; plus ``watch`` for state reports.

One connection per client, used by one call at a time (a lock): enough for
a scheduler's control loop and for compute-agent-ctl.
"""

import collections
import json
import logging
import threading
import time
import uuid

import amqp

from compute_agent import conf as agent_conf
from compute_agent.rpc import envelope
from compute_agent.rpc import transport
from compute_agent.version import RPC_API_VERSION

LOG = logging.getLogger(__name__)


class RemoteError(Exception):
    """A failure reply; ``exc_type`` is the agent's class name."""

    def __init__(self, exc_type, value, traceback=None, module=None):
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback or []
        self.module = module
        super().__init__('%s: %s' % (exc_type, value))


class Timeout(Exception):
    """No reply (nor heartbeat) within the timeout."""


class Unroutable(Exception):
    """No queue takes the request: is the agent on that host running?"""


class AgentClient:

    def __init__(self, transport_url, host, topic='compute',
                 exchange='openstack', timeout=60, state_topic='scheduler',
                 durable_exchange=False, context=None, conf=None):
        self.conf = conf or agent_conf.CONF
        self.broker = transport.Broker(self.conf, transport_url, heartbeat=0)
        self.host = host
        self.topic = topic
        self.exchange = exchange
        self.timeout = timeout
        self.state_topic = state_topic
        self.durable_exchange = durable_exchange
        self.context = dict(context or {})
        self._lock = threading.RLock()
        self._conn = self._channel = None
        self._reply_q = None
        self._replies = collections.defaultdict(collections.deque)
        self._waiting = set()
        self._returned = set()

    # ------------------------------------------------------------ wiring

    def _ensure(self):
        if self._conn is not None and self._conn.connected:
            return self._channel
        self.close()
        self._conn = self.broker.connect_once()
        self._channel = self._conn.channel()
        self._channel.exchange_declare(self.exchange, 'topic',
                                       durable=self.durable_exchange,
                                       auto_delete=False)
        self._channel.events['basic_return'].add(self._on_return)
        self._reply_q = None
        return self._channel

    def _on_return(self, exc, exchange, routing_key, message):
        self._returned.add(message.properties.get('message_id'))

    def _reply_queue(self):
        if self._reply_q is None:
            name = 'reply_' + uuid.uuid4().hex
            self._channel.queue_declare(name, exclusive=True,
                                        auto_delete=True)
            self._channel.basic_consume(name, no_ack=True,
                                        callback=self._on_reply)
            self._reply_q = name
        return self._reply_q

    def _on_reply(self, message):
        try:
            payload = envelope.loads(message.body)
        except envelope.DecodeError:
            LOG.warning('Undecodable reply dropped')
            return
        msg_id = payload.get('_msg_id')
        if msg_id in self._waiting:   # late replies of given-up calls: drop
            self._replies[msg_id].append(payload)

    def close(self):
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.release()
                except Exception:  # noqa: BLE001
                    pass
            self._conn = self._channel = self._reply_q = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _publish(self, payload, exchange, routing_key, mandatory=False):
        mid = uuid.uuid4().hex
        msg = amqp.Message(envelope.dumps(payload),
                           content_type='application/json',
                           content_encoding='utf-8', delivery_mode=2,
                           message_id=mid)
        self._channel.basic_publish(msg, exchange=exchange,
                                    routing_key=routing_key,
                                    mandatory=mandatory)
        return mid

    def _target(self, host):
        host = self.host if host is None else host
        return '%s.%s' % (self.topic, host) if host else self.topic

    # ---------------------------------------------------------- messages

    def cast(self, method, host=None, **args):
        """Send a request without waiting; returns its ``_unique_id``."""
        payload = envelope.build_request(method, args, context=self.context,
                                         version=RPC_API_VERSION)
        with self._lock:
            self._ensure()
            self._publish(payload, self.exchange, self._target(host))
        return payload['_unique_id']

    def fanout_cast(self, method, **args):
        """Cast to every agent on the topic (oslo's fanout exchange)."""
        payload = envelope.build_request(method, args, context=self.context,
                                         version=RPC_API_VERSION)
        with self._lock:
            ch = self._ensure()
            ex = '%s_fanout' % self.topic
            ch.exchange_declare(ex, 'fanout', durable=False, auto_delete=True)
            self._publish(payload, ex, self.topic)
        return payload['_unique_id']

    def call(self, method, timeout=None, host=None, **args):
        """Send a request and wait for its reply.

        ``timeout`` is the longest silence accepted: the agent sends a
        heartbeat every timeout/2 s while the operation runs, each of which
        extends the wait. Raises RemoteError, Timeout or Unroutable.
        """
        return self.call_args(method, args, timeout=timeout, host=host)

    def call_args(self, method, args, timeout=None, host=None):
        """``call`` with the request's args as one dict, so that an argument
        may be named ``timeout`` or ``host`` (power_off has a ``timeout``)."""
        timeout = self.timeout if timeout is None else timeout
        msg_id = uuid.uuid4().hex
        with self._lock:
            self._ensure()
            payload = envelope.build_request(
                method, args, context=self.context, version=RPC_API_VERSION,
                msg_id=msg_id, reply_q=self._reply_queue(), timeout=timeout)
            self._waiting.add(msg_id)
            try:
                mid = self._publish(payload, self.exchange,
                                    self._target(host), mandatory=True)
                return self._wait(msg_id, mid, timeout, method)
            finally:
                self._waiting.discard(msg_id)
                self._replies.pop(msg_id, None)

    def _wait(self, msg_id, mid, timeout, method):
        deadline = time.monotonic() + timeout
        while True:
            queue = self._replies.get(msg_id)
            while queue:
                reply = queue.popleft()
                if reply.get('failure'):
                    f = envelope.deserialize_failure(reply['failure'])
                    raise RemoteError(f.get('class'), f.get('message'),
                                      f.get('tb'), f.get('module'))
                if reply.get('ending', True):
                    return reply.get('result')
                deadline = time.monotonic() + timeout   # heartbeat
            if mid in self._returned:
                self._returned.discard(mid)
                raise Unroutable('no queue for %s on exchange %s'
                                 % (self._target(None), self.exchange))
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout('no reply to %s within %ss' % (method, timeout))
            try:
                self._conn.drain_events(timeout=min(left, 1.0))
            except TimeoutError:
                pass

    # ------------------------------------------------------ state reports

    def open_watch(self, instance_uuid=None):
        """A Watcher whose queue is bound when this returns: start it before
        sending the request whose reports you want."""
        return Watcher(self, instance_uuid)

    def watch(self, callback, instance_uuid=None):
        """Call ``callback(method, args, context)`` for each state report
        (of one instance if given) on a background thread; returns the
        Watcher (``stop()`` it)."""
        watcher = Watcher(self, instance_uuid)
        watcher.start(callback)
        return watcher

    # ------------------------------------------- docs: protocol-methods

    def _op(self, method, cast, timeout, args):
        if cast:
            return self.cast(method, **args)
        return self.call_args(method, args, timeout=timeout)

    def spawn(self, instance, image_meta, network_info=None,
              block_device_info=None, admin_password=None,
              injected_files=None, cast=False, timeout=None):
        return self._op('spawn', cast, timeout, dict(
            instance=instance, image_meta=image_meta,
            network_info=network_info or [],
            block_device_info=block_device_info,
            admin_password=admin_password,
            injected_files=injected_files or []))

    def rescue(self, instance, rescue_image_meta=None, rescue_password=None,
               cast=False, timeout=None):
        return self._op('rescue', cast, timeout, dict(
            instance=instance, rescue_image_meta=rescue_image_meta,
            rescue_password=rescue_password))

    def reboot(self, instance, reboot_type='SOFT', cast=False, timeout=None):
        return self._op('reboot', cast, timeout,
                        dict(instance=instance, reboot_type=reboot_type))

    def power_off(self, instance, timeout_s=60, cast=False, timeout=None):
        return self._op('power_off', cast, timeout,
                        dict(instance=instance, timeout=timeout_s))

    def destroy(self, instance, network_info=None, block_device_info=None,
                cleanup=True, cast=False, timeout=None):
        return self._op('destroy', cast, timeout, dict(
            instance=instance, network_info=network_info or [],
            block_device_info=block_device_info, cleanup=cleanup))

    def get_info(self, instance_uuid, timeout=None):
        return self.call('get_info', timeout=timeout,
                         instance_uuid=instance_uuid)

    def list_instances(self, timeout=None):
        return self.call('list_instances', timeout=timeout)

    def get_console_output(self, instance_uuid, tail_lines=100, timeout=None):
        return self.call('get_console_output', timeout=timeout,
                         instance_uuid=instance_uuid, tail_lines=tail_lines)

    def get_vnc_console(self, instance_uuid, timeout=None):
        return self.call('get_vnc_console', timeout=timeout,
                         instance_uuid=instance_uuid)

    def get_host_stats(self, timeout=None):
        return self.call('get_host_stats', timeout=timeout)

    def ping(self, timeout=None):
        return self.call('ping', timeout=timeout)


def _simple(method):
    def op(self, instance, cast=False, timeout=None):
        return self._op(method, cast, timeout, dict(instance=instance))
    op.__name__ = method
    op.__doc__ = '``%s`` of one instance (call, or cast with cast=True).' \
        % method
    return op


for _m in ('unrescue', 'power_on', 'pause', 'unpause', 'suspend', 'resume'):
    setattr(AgentClient, _m, _simple(_m))


class Watcher:
    """State reports from an exclusive auto-delete queue bound with the
    state topic's key, beside (not instead of) the scheduler's own
    ``<state_topic>`` queue, so both get every report."""

    def __init__(self, client, instance_uuid=None):
        self.instance_uuid = instance_uuid
        self._events = collections.deque()
        self._stop = threading.Event()
        self._thread = None
        self._conn = client.broker.connect_once()
        ch = self._conn.channel()
        ch.exchange_declare(client.exchange, 'topic',
                            durable=client.durable_exchange,
                            auto_delete=False)
        self.queue = '%s.watch_%s' % (client.state_topic, uuid.uuid4().hex)
        ch.queue_declare(self.queue, exclusive=True, auto_delete=True)
        ch.queue_bind(self.queue, client.exchange,
                      routing_key=client.state_topic)
        ch.basic_consume(self.queue, no_ack=True, callback=self._on_message)

    def _on_message(self, message):
        try:
            payload = envelope.loads(message.body)
        except envelope.DecodeError:
            return
        args = payload.get('args') or {}
        if self.instance_uuid and args.get('instance_uuid') not in (
                None, self.instance_uuid):
            return
        if self.instance_uuid and payload.get('method') != \
                'instance_state_changed':
            return
        self._events.append((payload.get('method'), args,
                             envelope.unflatten_context(payload)))

    def get(self, timeout=None):
        """Next (method, args, context), or None after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._events:
            left = 1.0 if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                self._conn.drain_events(timeout=min(left, 1.0))
            except TimeoutError:
                pass
        return self._events.popleft()

    def start(self, callback):
        def run():
            while not self._stop.is_set():
                event = self.get(timeout=0.5)
                if event is not None:
                    try:
                        callback(*event)
                    except Exception:  # noqa: BLE001
                        LOG.exception('watch callback failed')
        self._thread = threading.Thread(target=run, daemon=True,
                                        name='state-watch')
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self._conn.release()
        except Exception:  # noqa: BLE001
            pass

    close = stop


def report_line(args):
    """One line for an instance_state_changed report (for humans)."""
    return '%s %-20s vm_state=%s task_state=%s power_state=%s%s' % (
        args.get('timestamp'), args.get('event'), args.get('vm_state'),
        args.get('task_state'), args.get('power_state'),
        ' error=%s' % json.dumps(args['error']) if args.get('error') else '')
