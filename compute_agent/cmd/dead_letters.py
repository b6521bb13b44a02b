"""The dead-letter queue ``<topic>.dead``: list, requeue, purge.

Messages are taken with ``basic_get`` (unacknowledged) on one channel; what
an operation does not act on goes back to the queue, in place, when the
channel closes. A requeued message is published again to the exchange and
routing key it was dead-lettered from (RabbitMQ's ``x-death`` header), with
the death headers removed, under publisher confirms, and only then acked.
"""

import datetime
import hashlib

import amqp

from compute_agent.rpc import envelope
from compute_agent.rpc import topology

# Header an agent may set on a message it dead-letters itself, naming why.
AGENT_REASON_HEADER = 'x-compute-agent-reason'
_DEATH_HEADERS = ('x-death', 'x-first-death-reason', 'x-first-death-queue',
                  'x-first-death-exchange', 'x-last-death-reason',
                  'x-last-death-queue', 'x-last-death-exchange')


def _when(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    return None


def _text(value):
    if isinstance(value, bytes):
        return value.decode('utf-8', 'replace')
    return value


def describe(message, now=None):
    """The operator's view of one dead-lettered message (a dict)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    headers = message.properties.get('application_headers') or {}
    deaths = headers.get('x-death') or [{}]
    death = deaths[0] if isinstance(deaths[0], dict) else {}
    try:
        payload = envelope.loads(message.body)
    except envelope.DecodeError as e:
        payload, undecodable = {}, str(e)
    else:
        undecodable = None
    args = payload.get('args') if isinstance(payload.get('args'), dict) else {}
    instance = args.get('instance')
    uuid = (instance.get('uuid') if isinstance(instance, dict)
            else args.get('instance_uuid'))
    reasons = [_text(r) for r in (headers.get('x-first-death-reason')
                                  or death.get('reason'),
                                  headers.get(AGENT_REASON_HEADER),
                                  undecodable) if r]
    died = _when(death.get('time')) or _when(message.properties.get('timestamp'))
    keys = death.get('routing-keys') or []
    return {
        'id': str(payload.get('_unique_id')
                  or message.properties.get('message_id')
                  or hashlib.sha1(_raw(message.body)).hexdigest()[:32]),
        'method': payload.get('method') if isinstance(payload.get('method'), str)
        else None,
        'instance': uuid if isinstance(uuid, str) else None,
        'reason': '; '.join(str(r) for r in reasons) or None,
        'queue': _text(death.get('queue')),
        'exchange': _text(death.get('exchange')),
        'routing_key': _text(keys[0]) if keys else None,
        'count': death.get('count'),
        'age_s': None if died is None else round((now - died).total_seconds(), 1),
    }


def _raw(body):
    return body if isinstance(body, (bytes, bytearray)) else str(body).encode()


class DeadLetters:
    """Operations on the dead-letter queue of the agents on ``conf``'s topic."""

    def __init__(self, broker, conf):
        self.broker = broker
        self.queue = topology.names(conf)['dead_queue']

    def _take(self, channel, limit=None):
        messages = []
        while limit is None or len(messages) < limit:
            try:
                message = channel.basic_get(self.queue, no_ack=False)
            except amqp.exceptions.NotFound:
                break       # no agent on this topic ever declared it: empty
            if message is None:
                break
            messages.append(message)
        return messages

    def _session(self, fn):
        conn = self.broker.connect_once()
        try:
            channel = conn.channel()
            channel.auto_decode = False
            try:
                return fn(channel)
            finally:
                # Unacknowledged messages go back to the queue, in place.
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
        finally:
            conn.release()

    def list(self, limit=None):
        return self._session(
            lambda ch: [describe(m) for m in self._take(ch, limit)])

    def requeue(self, ids=None):
        """Publish back the selected (all when ``ids`` is None); returns
        their descriptions."""
        def run(channel):
            channel.confirm_select()
            done = []
            for message in self._take(channel):
                info = describe(message)
                if ids is not None and info['id'] not in ids:
                    continue
                if info['exchange'] is None or info['routing_key'] is None:
                    info['error'] = 'no x-death header: origin unknown'
                    done.append(info)
                    continue
                props = dict(message.properties)
                headers = {k: v for k, v in
                           (props.pop('application_headers', None) or {}).items()
                           if k not in _DEATH_HEADERS}
                if headers:
                    props['application_headers'] = headers
                channel.basic_publish(amqp.Message(message.body, **props),
                                      exchange=info['exchange'],
                                      routing_key=info['routing_key'])
                channel.basic_ack(message.delivery_tag)
                done.append(info)
            return done
        return self._session(run)

    def purge(self, ids=None):
        """Delete the selected messages (all when ``ids`` is None)."""
        def run(channel):
            done = []
            for message in self._take(channel):
                info = describe(message)
                if ids is None or info['id'] in ids:
                    channel.basic_ack(message.delivery_tag)
                    done.append(info)
            return done
        return self._session(run)
