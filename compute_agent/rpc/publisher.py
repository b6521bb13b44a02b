"""Outbox-backed publisher with publisher confirms.

Replies and state reports are written to the journal's outbox first and
deleted only after the broker confirmed them, so nothing is lost while the
broker is away; after a reconnect they go out again oldest first. Replies of
read-only requests are kept in memory only (they survive reconnects, not a
restart) and call-monitor heartbeats are dropped at a reconnect.

Any thread may hand over a message (``publish``); only the consume thread
touches the channel (``attach``/``pump``/``detach``) because kombu channels
are not thread-safe. Confirms are pipelined (up to ``window`` unconfirmed):
py-amqp's own confirm mode waits for each ack in turn (~5k msg/s), so the
Confirm.Select is sent by hand and acks are taken as events.
"""

import collections
import itertools
import logging
import threading
import time

import amqp

LOG = logging.getLogger(__name__)

REPLY = 'reply'
REPORT = 'report'
BEAT = 'beat'   # call-monitor heartbeat: worthless after a reconnect
_RETRY_RETURNED = 0.25  # seconds between tries of an unroutable reply


class Entry:
    __slots__ = ('id', 'kind', 'exchange', 'routing_key', 'body', 'durable',
                 'mandatory', 'deadline', 'returned', 'not_before')

    def __init__(self, id, kind, exchange, routing_key, body, durable=True,
                 mandatory=False):
        self.id = id
        self.kind = kind
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.durable = durable
        self.mandatory = mandatory
        self.deadline = None  # replies: give up being unroutable after it
        self.returned = False
        self.not_before = 0.0


class Publisher:

    def __init__(self, journal, conf, window=1000):
        self.journal = journal
        self.reply_timeout = conf.rpc.reply_timeout
        self.outbox_max = conf.rpc.outbox_max
        self.window = window
        self._lock = threading.Lock()
        self._pending = collections.deque()   # not yet published, in order
        self._delayed = []                    # returned replies to retry
        self._inflight = {}                   # confirm seq -> Entry
        self._by_mid = {}                     # message_id -> Entry
        self._confirmed = []                  # durable ids to delete
        self._transient_ids = itertools.count(1)
        self._durable = 0
        self._channel = None
        self._seq = 0
        self._wake = lambda: None
        for row in journal.outbox_load():
            self._pending.append(self.make_entry(*row))
            self._durable += 1
        if self._pending:
            LOG.info('Outbox holds %d messages from before', self._durable)

    def make_entry(self, id, kind, exchange, routing_key, body, durable=True):
        """An entry for an outbox row the caller wrote (see ``add``)."""
        return Entry(id, kind, exchange, routing_key, bytes(body), durable,
                     mandatory=(kind != REPORT))

    def set_waker(self, wake):
        """``wake()`` tells the consume loop there is something to send."""
        self._wake = wake

    # ------------------------------------------------------ any thread

    def publish(self, kind, exchange, routing_key, body, durable=True,
                wake=True):
        """Queue a message; durable ones are on disk when this returns.

        Non-durable ones live in memory only: they survive reconnects (but
        not a restart) unless they are heartbeats.
        """
        if durable:
            entry_id = self.journal.outbox_add(kind, exchange, routing_key,
                                               body)
        else:
            entry_id = self.memory_id()
        self.add(self.make_entry(entry_id, kind, exchange, routing_key, body,
                             durable), wake=wake)

    def memory_id(self):
        """Id of an entry that is not in the outbox."""
        return 't%d' % next(self._transient_ids)

    def add(self, *entries, wake=True):
        """Queue entries whose outbox rows were written by the caller
        (the server's group commit). The consume thread itself passes
        wake=False: it pumps before it sleeps anyway."""
        with self._lock:
            self._pending.extend(entries)
            self._durable += sum(1 for e in entries if e.durable)
            if self._durable > self.outbox_max:
                self._trim()
        if wake:
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
        LOG.error('Outbox over [rpc] outbox_max=%d: dropped the %d oldest '
                  'state reports', self.outbox_max, len(dropped))

    def waiting(self):
        """Messages not yet confirmed (pending, delayed or in flight)."""
        with self._lock:
            return len(self._pending) + len(self._delayed) + len(
                self._inflight)

    # ---------------------------------------------- consume thread only

    def has_confirmed(self):
        return bool(self._confirmed)

    def take_confirmed(self):
        """Outbox ids whose rows may be deleted (confirmed or dropped)."""
        with self._lock:
            ids, self._confirmed = self._confirmed, []
        return ids

    def attach(self, channel):
        channel.confirm_select()
        channel.events['basic_ack'].add(self._on_ack)
        channel.events['basic_nack'].add(self._on_nack)
        channel.events['basic_return'].add(self._on_return)
        self._channel = channel
        self._seq = 0

    def detach(self):
        """Connection lost: everything unconfirmed goes out again, in order."""
        self._channel = None
        with self._lock:
            back = [e for e in list(self._inflight.values()) + self._delayed
                    + list(self._pending) if e.kind != BEAT]
            back.sort(key=_order)
            self._pending = collections.deque(back)
            self._inflight.clear()
            self._by_mid.clear()
            self._delayed = []

    def next_due(self):
        """Seconds until a delayed retry is due (None: nothing delayed)."""
        with self._lock:
            if not self._delayed:
                return None
            return max(0.0, min(e.not_before for e in self._delayed)
                       - time.monotonic())

    def pump(self):
        """Publish what is waiting, up to the confirm window."""
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
                entry = self._pending.popleft()
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
            channel.basic_publish(msg, exchange=entry.exchange,
                                  routing_key=entry.routing_key,
                                  mandatory=entry.mandatory)

    def _on_ack(self, tag, multiple):
        with self._lock:
            tags = [t for t in self._inflight if t <= tag] if multiple \
                else [tag]
            for t in tags:
                entry = self._inflight.pop(t, None)
                if entry is None:
                    continue
                self._by_mid.pop(str(entry.id), None)
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
        LOG.error('Reply to %s abandoned: its queue did not appear within '
                  '[rpc] reply_timeout=%ss', entry.routing_key,
                  self.reply_timeout)
        if entry.durable:
            self._confirmed.append(entry.id)
            self._durable -= 1

    def _on_nack(self, tag, multiple):
        with self._lock:
            tags = [t for t in self._inflight if t <= tag] if multiple \
                else [tag]
            back = [self._inflight.pop(t) for t in tags if t in self._inflight]
            for e in back:
                self._by_mid.pop(str(e.id), None)
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


def _order(entry):
    """Outbox rows first in id order, then memory-only entries in order."""
    if entry.durable:
        return (0, entry.id)
    return (1, int(str(entry.id)[1:]))
