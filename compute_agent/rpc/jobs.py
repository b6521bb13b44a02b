"""Requests in flight and the settlement (ack/reject) of their deliveries.

A job is one request (one ``_unique_id``) that may have been delivered more
than once: a redelivery after a reconnect, or the same message published
twice. Every delivery is settled when the job ends; deliveries from an
earlier connection are dropped (their tags mean nothing on the new channel,
the broker has already requeued them).
"""

import logging
import time

LOG = logging.getLogger(__name__)


class Job:

    __slots__ = ('uid', 'request', 'args', 'key', 'instance_uuid',
                 'deliveries', 'replies', 'beat_interval', 'next_beat',
                 'result_json', 'failure', 'ended')

    def __init__(self, uid, request):
        self.uid = uid
        self.request = request
        self.args = None
        self.key = None
        self.instance_uuid = None
        self.deliveries = []   # (connection generation, delivery tag)
        self.replies = []      # (msg_id, reply_q) of every call delivery
        self.beat_interval = None
        self.next_beat = None
        self.result_json = 'null'
        self.failure = None
        self.ended = False     # its outcome is being answered and recorded

    def add_delivery(self, gen, tag, request):
        self.deliveries.append((gen, tag))
        if not request.is_call:
            return
        target = (request.msg_id, request.reply_q)
        if self.ended:
            # Asked again after its reply went out (a read-only call's
            # outcome is recorded a moment later): its caller may have lost
            # that reply, so it is answered again, as once recorded.
            self.replies.append(target)
        elif target not in self.replies:
            # A copy while it runs: one reply, when it ends.
            self.replies.append(target)
            # Call-monitor heartbeats every _timeout/2 s (oslo's rule).
            if request.timeout and request.timeout >= 2:
                self.beat_interval = request.timeout / 2.0
                self.next_beat = time.monotonic() + self.beat_interval


class Settlement:
    """Unsettled delivery tags of the current channel; acks in bulk.

    ``basic_ack(tag, multiple=True)`` settles every unsettled delivery up to
    ``tag``, so it is used only below the lowest delivery still unsettled;
    a burst of finished casts then costs one ack frame instead of hundreds.
    """

    def __init__(self):
        self.gen = 0
        self._channel = None
        self._unsettled = set()
        self._held = None

    def hold(self):
        """Defer rejects until ``release`` (while the socket reads
        non-blocking, nothing may be written)."""
        self._held = []

    def release(self):
        held, self._held = self._held, None
        for tag in held or ():
            self.reject(tag)

    def attach(self, channel):
        self.gen += 1
        self._channel = channel
        self._unsettled = set()

    def detach(self):
        self._channel = None
        self._unsettled = set()
        self._held = None

    def delivered(self, tag):
        self._unsettled.add(tag)

    def reject(self, tag):
        """Dead-letter a delivery (requeue=False)."""
        if self._held is not None:
            self._held.append(tag)
            return
        self._unsettled.discard(tag)
        if self._channel is not None:
            self._channel.basic_reject(tag, requeue=False)

    def reject_all(self, deliveries):
        """Dead-letter the (gen, tag) pairs of the current connection."""
        for gen, tag in deliveries:
            if gen == self.gen and tag in self._unsettled:
                self.reject(tag)

    def ack(self, deliveries):
        """Ack (gen, tag) pairs of the current connection; drop the rest."""
        if self._channel is None:
            return
        tags = sorted(t for g, t in deliveries if g == self.gen
                      and t in self._unsettled)
        if not tags:
            return
        self._unsettled.difference_update(tags)
        low = min(self._unsettled) if self._unsettled else None
        below = [t for t in tags if low is None or t < low]
        if len(below) > 1:
            self._channel.basic_ack(below[-1], multiple=True)
        elif below:
            self._channel.basic_ack(below[0])
        for tag in tags[len(below):]:
            self._channel.basic_ack(tag)


def next_beat_in(jobs):
    """Seconds until the next call-monitor heartbeat is due, or None."""
    beats = [j.next_beat for j in jobs if j.next_beat is not None]
    return max(0.0, min(beats) - time.monotonic()) if beats else None


def beats_due(jobs):
    """(msg_id, reply_q) owed a heartbeat now; schedules the next one."""
    now = time.monotonic()
    due = []
    for job in jobs:
        if job.next_beat is not None and job.next_beat <= now:
            job.next_beat = now + job.beat_interval
            due.extend(job.replies)
    return due


def instance_uuid_of(dispatcher, method, args):
    """Best-effort instance uuid of a (maybe invalid) request."""
    try:
        finder = getattr(dispatcher, 'instance_uuid_of', None)
        if finder is not None:
            return finder(method, args)
        if isinstance(args, dict):
            inst = args.get('instance')
            if isinstance(inst, dict) and isinstance(inst.get('uuid'), str):
                return inst['uuid']
            if isinstance(args.get('instance_uuid'), str):
                return args['instance_uuid']
    except Exception:  # noqa: BLE001 - best effort only
        LOG.debug('instance_uuid_of failed', exc_info=True)
    return None
