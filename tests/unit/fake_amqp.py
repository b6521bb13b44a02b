"""A py-amqp channel for broker-less unit tests: what the server and the
publisher call on it, recorded in order."""

import collections

import amqp


class Channel:
    """What the server calls on a py-amqp channel, recorded."""

    def __init__(self):
        self.calls = []
        self.events = collections.defaultdict(set)

    def basic_ack(self, tag, multiple=False):
        self.calls.append(('ack', tag, multiple))

    def basic_reject(self, tag, requeue):
        self.calls.append(('reject', tag, requeue))

    def confirm_select(self):
        self.calls.append(('confirm_select',))

    def basic_publish(self, msg, exchange, routing_key, mandatory):
        # py-amqp encodes the routing key as a short string (<= 255 bytes)
        # before it writes anything; so does this fake.
        if len(routing_key.encode()) > 255:
            raise amqp.exceptions.FrameSyntaxError('shortstr too long')
        self.calls.append(('publish', routing_key, mandatory, msg.body,
                           msg.properties.get('message_id')))

    def published(self):
        return [c for c in self.calls if c[0] == 'publish']

    def settled(self):
        return [c for c in self.calls if c[0] in ('ack', 'reject')]
