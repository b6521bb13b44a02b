"""Outbox messages: what the agent publishes (replies, reports, heartbeats).

Every message leaves the agent the same way (the protocol docs sections 4 and 5):
it is handed to a journal write (``Journal.send``, or the ``messages`` of
``Journal.record``/``save_instance``/``next_sequence``). A durable message is
written to the outbox table in that write's transaction, beside the state it
reports (an instance record, a request outcome), so one fsync covers both;
after the commit the journal hands every message, in outbox order, to its
sink: the publisher, which sends it and deletes its row once the broker
confirmed it (or it was dropped as unpublishable, see ``Publisher``).
"""

REPLY = 'reply'
REPORT = 'report'
BEAT = 'beat'   # call-monitor heartbeat: worthless after a reconnect


class Message:
    """One message to publish, and its delivery state in the publisher.

    ``body``: bytes, or a function ``body(sequence)`` returning them, called
    inside the transaction that assigns the instance's sequence (a state
    report). ``durable``: kept in the outbox table until confirmed (survives a
    restart); otherwise memory only. ``id``: the outbox row id, or ``'t<n>'``
    for a memory-only message, set when the journal takes it.
    """

    __slots__ = ('id', 'kind', 'exchange', 'routing_key', 'body', 'durable',
                 'mandatory', 'deadline', 'returned', 'not_before',
                 'suspect', 'refusals')

    def __init__(self, kind, exchange, routing_key, body, durable=True,
                 id=None):
        self.id = id
        self.kind = kind
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.durable = durable
        self.mandatory = kind != REPORT   # a reply's queue may be gone
        self.deadline = None   # replies: give up being unroutable after it
        self.returned = False
        self.not_before = 0.0
        self.suspect = False   # in flight when the broker closed the channel
        self.refusals = 0      # channel closes while in flight alone

    def __repr__(self):
        return '<%s %s to %r>' % (self.kind, self.id, self.routing_key)
