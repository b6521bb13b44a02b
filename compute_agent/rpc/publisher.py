"""Outbox-backed publisher with publisher confirms.

Replies and state reports are written to the journal's outbox first (see
``rpc/outbox.py``: the journal hands them over after their commit) and
deleted only after the broker confirmed them, so nothing is lost while the
broker is away; after a reconnect they go out again oldest first. Replies of
read-only requests are kept in memory only (they survive reconnects, not a
restart) and call-monitor heartbeats are dropped at a reconnect.

A message the broker will never take is dropped, so that it cannot block
the outbox, now or after a restart: one that cannot even be encoded (a
``_reply_q`` longer than AMQP's 255-byte short string) at once; one while
in flight the broker closed the publishing channel (a message over its
``max_message_size``, say) is sent again alone, and dropped after
``MAX_REFUSALS`` such closes. A dropped message is logged once, counted
(``compute_agent_messages_dropped``) and recorded in the journal's
``dropped`` table.

Any thread may hand over a message (``publish``); only the consume thread
touches the channel (``attach``/``pump``/``detach``) because kombu channels
are not thread-safe. Confirms are pipelined (up to ``window`` unconfirmed):
py-amqp's own confirm mode waits for each ack in turn (~5k msg/s), so the
Confirm.Select is sent by hand and acks are taken as events.
"""

import collections
import logging
import socket
import struct
import threading
import time

import amqp

from compute_agent.metrics import METRICS
from compute_agent.rpc import outbox
from compute_agent.rpc.outbox import BEAT, REPLY, REPORT  # noqa: F401

LOG = logging.getLogger(__name__)

_RETRY_RETURNED = 0.25  # seconds between tries of an unroutable reply
# A message the broker refused this many times while in flight alone (it
# closed the channel each time) is dropped: it would block the outbox.
MAX_REFUSALS = 3
# What basic_publish raises for a message that cannot be encoded at all (a
# routing key over 255 bytes, say): nothing reached the socket.
_UNENCODABLE = (struct.error, ValueError, TypeError, OverflowError,
                amqp.exceptions.FrameSyntaxError)


class Publisher:
    """Sends what the journal's outbox hands it (``add``, the journal's
    sink); confirms delete the rows, unpublishable messages are dropped."""

    def __init__(self, journal, conf, window=1000):
        self.journal = journal
        self.reply_timeout = conf.rpc.reply_timeout
        self.outbox_max = conf.rpc.outbox_max
        self.window = window
        self._lock = threading.Lock()
        self._pending = collections.deque()   # not yet published, in order
        self._delayed = []                    # returned replies to retry
        self._inflight = {}                   # confirm seq -> Message
        self._by_mid = {}                     # message_id -> Message
        self._confirmed = []                  # durable ids to delete
        self._dropped = []                    # (Message, reason) given up
        self._durable = 0
        self._channel = None
        self._owner = None                    # the consume thread's ident
        self._solo = None                     # a suspect in flight alone
        self._seq = 0
        self._wake = lambda: None
        for id_, kind, exchange, key, body in journal.outbox_load():
            self._pending.append(outbox.Message(kind, exchange, key,
                                                bytes(body), id=id_))
            self._durable += 1
        if self._pending:
            LOG.info('Outbox holds %d messages from before', self._durable)
        journal.set_sink(self.add)

    def set_waker(self, wake):
        """``wake()`` tells the consume loop there is something to send."""
        self._wake = wake

    # ------------------------------------------------------ any thread

    def publish(self, kind, exchange, routing_key, body, durable=True):
        """Send one message through the journal's outbox (durable ones are
        on disk when this returns; memory-only ones survive reconnects, not
        a restart, and heartbeats not even a reconnect)."""
        self.journal.send([outbox.Message(kind, exchange, routing_key, body,
                                          durable)])

    def add(self, messages):
        """The journal's sink: queue committed messages, in order."""
        with self._lock:
            self._pending.extend(messages)
            self._durable += sum(1 for m in messages if m.durable)
            if self._durable > self.outbox_max:
                self._trim()
        # The consume thread pumps before it sleeps anyway.
        if threading.get_ident() != self._owner:
            self._wake()

    def _trim(self):
        """Drop the oldest not-yet-sent reports down to 90% of outbox_max."""
        excess = self._durable - int(self.outbox_max * 0.9)
        dropped, keep = [], collections.deque()
        for e in self._pending:
            if excess > 0 and e.durable and e.kind == REPORT:
                dropped.append(e.id)
                excess -= 1
            else:
                keep.append(e)
        if not dropped:
            return
        self._pending = keep
        self._durable -= len(dropped)
        self._confirmed.extend(dropped)
        METRICS.dropped.labels(REPORT, 'outbox_max').inc(len(dropped))
        LOG.error('Outbox over [rpc] outbox_max=%d: dropped the %d oldest '
                  'state reports', self.outbox_max, len(dropped))

    def waiting(self):
        """Messages not yet confirmed (pending, delayed or in flight)."""
        with self._lock:
            return len(self._pending) + len(self._delayed) + len(
                self._inflight)

    # ---------------------------------------------- consume thread only

    def has_settled(self):
        """Rows to delete from the outbox (confirmed or dropped)?"""
        return bool(self._confirmed or self._dropped)

    def take_settled(self):
        """(outbox ids the broker confirmed, [(Message, reason)] dropped):
        for the journal (``Journal.record``), which deletes their rows."""
        with self._lock:
            ids, self._confirmed = self._confirmed, []
            dropped, self._dropped = self._dropped, []
        return ids, dropped

    def untake(self, ids, dropped):
        """Give back what ``take_settled`` returned (its commit failed)."""
        with self._lock:
            self._confirmed[:0] = ids
            self._dropped[:0] = dropped

    def attach(self, channel):
        channel.confirm_select()
        channel.events['basic_ack'].add(self._on_ack)
        channel.events['basic_nack'].add(self._on_nack)
        channel.events['basic_return'].add(self._on_return)
        self._channel = channel
        self._owner = threading.get_ident()
        self._seq = 0

    def detach(self, refused=False):
        """Connection lost: everything unconfirmed goes out again, in order.

        ``refused``: the broker closed the channel over a publish. Each
        message then in flight becomes a suspect, sent again alone; one
        refused while alone ``MAX_REFUSALS`` times is dropped.
        """
        self._channel = None
        with self._lock:
            inflight = [e for e in self._inflight.values() if e.kind != BEAT]
            if refused:
                for e in inflight:
                    if len(self._inflight) == 1 and e.suspect:
                        e.refusals += 1
                    e.suspect = True
                for e in [e for e in inflight if e.refusals >= MAX_REFUSALS]:
                    inflight.remove(e)
                    self._drop(e, 'refused', 'the broker closed the channel '
                               'over it %d times' % e.refusals)
            back = inflight + [e for e in self._delayed + list(self._pending)
                               if e.kind != BEAT]
            back.sort(key=_order)
            self._pending = collections.deque(back)
            self._inflight.clear()
            self._by_mid.clear()
            self._delayed = []
            self._solo = None

    def _drop(self, entry, reason, detail):
        """Give up on ``entry`` for good (lock held): logged once, counted,
        recorded by the next journal commit."""
        self._dropped.append((entry, reason))
        if entry.durable:
            self._durable -= 1
        METRICS.dropped.labels(entry.kind, reason).inc()
        LOG.error('Dropped unpublishable %s to %r (%d bytes): %s',
                  entry.kind, entry.routing_key[:300], len(entry.body),
                  detail)

    def next_due(self):
        """Seconds until a delayed retry is due (None: nothing delayed)."""
        with self._lock:
            if not self._delayed:
                return None
            return max(0.0, min(e.not_before for e in self._delayed)
                       - time.monotonic())

    def pump(self):
        """Publish what is waiting, up to the confirm window (a suspect
        goes alone: nothing else is in flight with it)."""
        channel = self._channel
        if channel is None:
            return
        now = time.monotonic()
        with self._lock:
            if self._delayed:
                due = [e for e in self._delayed if e.not_before <= now]
                if due:
                    self._delayed = [e for e in self._delayed
                                     if e.not_before > now]
                    self._pending.extendleft(reversed(due))
        while True:
            with self._lock:
                if not self._pending or len(self._inflight) >= self.window:
                    return
                entry = self._pending[0]
                if self._solo is not None or (entry.suspect
                                              and self._inflight):
                    return
                self._pending.popleft()
                self._seq += 1
                self._inflight[self._seq] = entry
                self._by_mid[str(entry.id)] = entry
            if entry.kind == REPLY and entry.deadline is None:
                entry.deadline = now + self.reply_timeout
            entry.returned = False
            msg = amqp.Message(
                entry.body, content_type='application/json',
                content_encoding='utf-8', delivery_mode=2,
                message_id=str(entry.id))
            try:
                _basic_publish(channel, msg, entry.exchange,
                               entry.routing_key, entry.mandatory)
            except _UNENCODABLE as e:
                # Raised before any byte was written: the broker never saw
                # it, so it takes no confirm number.
                with self._lock:
                    del self._inflight[self._seq]
                    self._by_mid.pop(str(entry.id), None)
                    self._seq -= 1
                    self._drop(entry, 'unencodable', '%s: %s' % (
                        type(e).__name__, e))
                continue
            if entry.suspect:
                self._solo = entry
                return

    def _on_ack(self, tag, multiple):
        with self._lock:
            tags = [t for t in self._inflight if t <= tag] if multiple \
                else [tag]
            for t in tags:
                entry = self._inflight.pop(t, None)
                if entry is None:
                    continue
                self._by_mid.pop(str(entry.id), None)
                if entry is self._solo:
                    self._solo = None
                if entry.returned and entry.kind == REPLY:
                    self._unroutable(entry)
                elif entry.durable:
                    self._confirmed.append(entry.id)
                    self._durable -= 1

    def _unroutable(self, entry):
        if time.monotonic() < entry.deadline:
            entry.not_before = time.monotonic() + _RETRY_RETURNED
            self._delayed.append(entry)
            return
        self._drop(entry, 'unroutable', 'its queue did not appear within '
                   '[rpc] reply_timeout=%ss' % self.reply_timeout)

    def _on_nack(self, tag, multiple):
        with self._lock:
            tags = [t for t in self._inflight if t <= tag] if multiple \
                else [tag]
            back = [self._inflight.pop(t) for t in tags if t in self._inflight]
            for e in back:
                self._by_mid.pop(str(e.id), None)
                if e is self._solo:
                    self._solo = None
            self._pending.extendleft(reversed(back))
        LOG.warning('Broker refused %d messages; they will be sent again',
                    len(back))

    def _on_return(self, exc, exchange, routing_key, message):
        mid = message.properties.get('message_id')
        with self._lock:
            entry = self._by_mid.get(mid)
            if entry is not None:
                entry.returned = True
        LOG.debug('Message %s to %r returned: %s', mid, routing_key, exc)


def _basic_publish(channel, msg, exchange, routing_key, mandatory):
    """``channel.basic_publish`` without its read of the socket first.

    py-amqp's ``basic_publish`` first drains the connection (timeout 0, to
    notice a ``connection.blocked``): a failed recv(), two fcntl() calls and
    a raised timeout per message, and frames dispatched from inside the
    publish. The consume loop reads and dispatches every frame anyway, so
    the message is written at once (what ``basic_publish`` then does). A
    channel that is not py-amqp's (tests' fakes) publishes as usual.
    """
    if not isinstance(channel, amqp.Channel):
        channel.basic_publish(msg, exchange=exchange, routing_key=routing_key,
                              mandatory=mandatory)
        return
    if not channel.connection:
        raise amqp.exceptions.RecoverableConnectionError(
            'basic_publish: connection closed')
    try:
        channel.send_method(amqp.spec.Basic.Publish, 'Bssbb',
                            (0, exchange, routing_key, mandatory, False), msg)
    except (socket.timeout, TimeoutError):
        # As py-amqp: a write timeout means the connection is dead.
        raise amqp.exceptions.RecoverableConnectionError(
            'basic_publish: timed out') from None


def _order(entry):
    """Outbox rows first in id order, then memory-only entries in order."""
    if entry.durable:
        return (0, entry.id)
    return (1, int(str(entry.id)[1:]))
