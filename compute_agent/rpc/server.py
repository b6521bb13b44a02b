"""The RPC server: consumes requests, hands them to workers, replies.

One consume thread owns the broker connection and does every channel
operation (kombu/py-amqp channels are not thread-safe): it decodes, checks
the journal for duplicates, admits work (validates it and queues it for
the workers), then records, acks and publishes. Workers never touch the
channel; they hand outcomes back through a queue and wake the loop through
a pipe, which the loop select()s on beside the socket, so a finished call
is answered at once and AMQP heartbeats keep being answered during long
operations.

State-changing requests are admitted only while fewer than
``ADMIT_PER_WORKER * max_concurrent_builds`` of them are admitted and
unfinished; later ones wait, decoded, in arrival order (see ``_held``).

Requests read in one drain of the socket are started after it, so that
workers do not contend for the GIL while the loop reads. Outcomes of every
request that finished meanwhile are recorded in a single journal
transaction (group commit, on the committer thread of ``rpc/commits.py``
while the loop reads on) before their acks; only requests with a
serialization key (state-changing ones) need that commit to be fsynced (see
``Dispatcher.key``), and read-only ones are answered before theirs. Replies
and reports go out through the journal's outbox (``rpc/outbox.py``).
"""

import collections
import functools
import json
import logging
import queue
import threading
import time

import amqp

from compute_agent import exception
from compute_agent import log
from compute_agent.metrics import METRICS
from compute_agent.metrics import labelled
from compute_agent.rpc import commits
from compute_agent.rpc import envelope
from compute_agent.rpc import frames
from compute_agent.rpc import iowait
from compute_agent.rpc import jobs
from compute_agent.rpc import limits as limits_mod
from compute_agent.rpc import outbox
from compute_agent.rpc import publisher as publisher_mod
from compute_agent.rpc import topology
from compute_agent.rpc import transport
from compute_agent.rpc.workers import KeyedExecutor

LOG = logging.getLogger(__name__)

_RUNNING_FLUSH = 1.0     # s a buffered 'running' row may wait for a commit
_STUCK_AFTER = 30.0      # s without a loop turn: the consume loop is stuck
_PUBLISH = (60, 40)      # basic.publish, as a refusal names the method
_DEAD_RETRY = 10.0       # s between tries to declare <topic>.dead
# State-changing requests admitted (validated, planned, queued) per build
# worker at once: one running and one ready, so no worker waits for the loop.
ADMIT_PER_WORKER = 2


class RPCServer:
    """Serve ``dispatcher`` on ``<topic>``, ``<topic>.<host>`` and fanout.

    ``journal`` records outcomes and holds the outbox; ``publisher`` (made
    from the journal when not given) must be the one the notifier uses.
    """

    def __init__(self, conf, dispatcher, journal, publisher=None,
                 broker=None):
        self.conf = conf
        self.dispatcher = dispatcher
        self.journal = journal
        self.publisher = publisher or publisher_mod.Publisher(journal, conf)
        self.broker = broker or transport.Broker(conf)
        self.executor = KeyedExecutor(conf.max_concurrent_builds)
        self._waker = iowait.Waker()
        self._committer = commits.Committer(journal, self._waker.wake)
        self.limits = limits_mod.Limits.from_conf(conf)
        self._dead_retry = None   # thread declaring <topic>.dead later
        self.ready = threading.Event()
        self.error = None
        self.stats = {'received': 0, 'duplicates': 0, 'dead_lettered': 0,
                      'invalid': 0, 'completed': 0, 'reconnects': 0}
        self._stop = threading.Event()
        self._deadline = None
        self._completions = queue.SimpleQueue()
        self._skipped = queue.SimpleQueue()   # not started: stopping
        self._inflight = {}       # uid -> Job; consume thread only
        # The running calls owed call-monitor heartbeats: looked at every
        # loop turn, unlike _inflight, which also holds up to prefetch/2
        # answered read-only requests until their outcomes are committed.
        self._beating = {}        # uid -> Job
        self._ready = []          # accepted during this drain, not started
        self._keyed = []          # finished state-changing jobs to record
        self._lazy = []           # (job, replies sent) read-only, answered
        self._lazy_since = 0.0
        self._lazy_max = max(1, conf.rpc.prefetch_count // 2)
        # (since, (uid, method, instance_uuid)) of started requests, oldest
        # first: a 'running' row is written only for a request still running
        # _RUNNING_FLUSH s after it started (commits.due_running).
        self._running_rows = []
        self._settle = jobs.Settlement()
        self._connected = False
        self._last_turn = time.monotonic()
        self._thread = None
        self._more = False        # frames may be left in py-amqp's buffer
        self._reader = None       # rpc/frames.py, per connection
        self._refused = False     # the broker closed a channel over a publish
        self._consume_ident = None
        # Keyless methods the dispatcher says touch only memory: run on the
        # consume thread itself (a ping is answered without a thread hop).
        self._inline = frozenset(getattr(dispatcher, 'inline_methods', ()))
        # Admission. The broker's window (prefetch_count, sized for group
        # commit and bulk acks) hands over hundreds of casts at once, but
        # only max_concurrent_builds can run. Validated and planned, each
        # waiting one held its args twice and a guest plan (~15 kB): a
        # burst's peak, which stayed in the heap as fragmentation once the
        # burst had passed (bench/scale.py: 2.6 MB of the RSS with 1,000
        # instances). So a state-changing request arriving while
        # _admit_max are admitted and unfinished, or behind one held, is
        # held as it was decoded, and admitted in arrival order (which
        # keeps each instance's order) as the workers take what came
        # before it. Its verdict waits with it, as it would in the broker's
        # queue. The dispatcher names the methods never held (read-only
        # ones answer at once) and those checked as they arrive even when
        # held (a destroy's key() cancels what its instance waits on).
        self._held = collections.deque()   # Jobs, oldest first
        self._admitted = 0        # admitted keyed jobs not yet finished
        self._admit_max = ADMIT_PER_WORKER * conf.max_concurrent_builds
        self._unheld = self._inline | frozenset(
            getattr(dispatcher, 'unheld_methods', ()))
        self._on_arrival = frozenset(getattr(dispatcher, 'arrival_methods',
                                             ()))
        self.publisher.set_waker(self._waker.wake)

    # ----------------------------------------------------------- public

    def start(self):
        stale = self.journal.forget_running()
        if stale:
            LOG.warning('%d requests were interrupted by the last stop; they '
                        'run again when redelivered', len(stale))
        self._thread = threading.Thread(target=self._run, name='rpc-consume',
                                        daemon=True)
        self._thread.start()
        threading.Thread(target=self.journal.prune_periodically,
                         args=(self.conf.journal_max_age,
                               self.conf.journal_max_entries, self._stop),
                         name='journal-prune', daemon=True).start()

    def stop(self, graceful_timeout=None):
        """Stop consuming; let in-flight work finish for up to the timeout.

        Finished work is acked and answered; unfinished work stays unacked
        and is redelivered to whoever consumes next.
        """
        if graceful_timeout is None:
            graceful_timeout = self.conf.graceful_shutdown_timeout
        self._deadline = time.monotonic() + graceful_timeout
        self._stop.set()
        self._waker.wake()
        if self._thread is not None:
            self._thread.join(graceful_timeout + 15)

    def wait(self):
        if self._thread is not None:
            self._thread.join()

    @property
    def connected(self):
        """Consuming on a live broker connection."""
        return self._connected

    def liveness_problem(self):
        """Why the consume loop is not alive, or None when it is.

        Waiting for the broker is alive (the loop is in its reconnect
        policy); only a dead thread or a connected loop that stopped turning
        is not. Workers must be running too.
        """
        if self._thread is None or not self._thread.is_alive():
            return 'consume thread not running'
        idle = time.monotonic() - self._last_turn
        if self._connected and idle > _STUCK_AFTER:
            return 'consume loop stuck for %.0fs' % idle
        dead = self.executor.dead_threads()
        if dead and not self._stop.is_set():
            return '%d worker threads died' % dead
        return None

    def healthy(self):
        """Consume loop alive, connected and turning (for a watchdog)."""
        return bool(self._thread and self._thread.is_alive()
                    and self._connected
                    and time.monotonic() - self._last_turn < 30)

    # ---------------------------------------------------- connection loop

    def _run(self):
        self._consume_ident = threading.get_ident()
        try:
            transport.supervise(self.broker, self._stop, self._serve,
                                self.ready, self._disconnected)
        except Exception as e:  # noqa: BLE001 - the broker is given up
            LOG.error('RPC server gave up: %s', e)
            self.error = e
        finally:
            self.executor.shutdown()
            self._committer.stop()
            LOG.info('RPC server stopped (%s)', self.stats)

    def _disconnected(self, lost):
        """After each connection: forget its channels; count real losses."""
        self._connected = False
        self._start_ready()   # in flight: their redeliveries wait for them
        self._settle.detach()
        self.publisher.detach(refused=self._refused)
        self._refused = False
        if lost:
            self.stats['reconnects'] += 1
            labelled(METRICS.reconnects, 'broker').inc()

    def _serve(self, conn):
        channel = conn.channel()
        channel.auto_decode = False  # bodies stay bytes; we decode them
        pub_channel = conn.channel()
        queues = topology.declare(channel, self.conf)
        self._declare_dead(conn)
        # Per-consumer prefetch: global QoS is deprecated in RabbitMQ 4.
        channel.basic_qos(0, self.conf.rpc.prefetch_count, False)
        self._settle.attach(channel)
        # Only <topic>.<host> carries instance methods.
        own = topology.names(self.conf)['host_queue']
        tags = [channel.basic_consume(
            q, callback=functools.partial(self._on_message, shared=q != own),
            on_cancel=topology.consumer_cancelled)
            for q in queues]
        self.publisher.attach(pub_channel)
        self._connected = True
        self.ready.set()
        LOG.info('Consuming %s', ', '.join(queues))
        self._reader = frames.FrameReader.attach(conn.connection)
        if self._reader is None:    # TLS: py-amqp reads, in large chunks
            iowait.buffer_reads(conn.connection.transport)
        try:
            self._loop(conn, channel, tags)
        except amqp.exceptions.ChannelError as e:
            # Only the publisher publishes: the broker refused a message.
            self._refused = getattr(e, 'method_sig', None) == _PUBLISH
            raise

    def _loop(self, conn, channel, tags):
        amqp_conn = conn.connection
        beat_every = max(0.5, min(5.0, (amqp_conn.heartbeat or 20) / 4.0))
        next_beat_check = 0.0
        while True:
            self._last_turn = now = time.monotonic()
            if self._stop.is_set():
                if tags:
                    for tag in tags:
                        channel.basic_cancel(tag)
                    tags = []
                    LOG.info('Stopped consuming; waiting up to %.0fs for %d '
                             'requests', self._deadline - now,
                             len(self._inflight))
                self._forget_unstarted()
                if not self._inflight or now >= self._deadline:
                    break
            if self._wait_io(amqp_conn) or self._more:
                self._more = iowait.drain(amqp_conn, self._settle,
                                          self._reader)
            # Also what arrived outside a drain (during basic_consume).
            self._start_ready()
            self._finish_jobs()
            self._admit_held()
            self._send_call_heartbeats()
            self.publisher.pump()
            if now >= next_beat_check:
                conn.heartbeat_check()
                next_beat_check = now + beat_every
        self._flush_on_stop(amqp_conn)

    def _forget_unstarted(self):
        """Stopping: drop what will not start (held, or skipped by a
        worker) from the books; it stays unacked, for redelivery to whoever
        consumes next."""
        gone, self._held = self._held, collections.deque()
        try:
            while True:
                job = self._skipped.get_nowait()
                if job.key is not None:
                    self._admitted -= 1
                gone.append(job)
        except queue.Empty:
            pass
        for job in gone:
            self._inflight.pop(job.uid, None)
            self._beating.pop(job.uid, None)

    def _declare_dead(self, conn):
        """Declare <topic>.dead; when it is unavailable, serve anyway and
        keep trying on a connection of its own (docs: protocol-transport)."""
        error = topology.declare_dead(conn, self.conf)
        if error is None:
            return
        LOG.error('Cannot declare the dead-letter queue %s (%s); serving '
                  'without it, trying again every %.0fs',
                  topology.names(self.conf)['dead_queue'], error, _DEAD_RETRY)
        if self._dead_retry is None or not self._dead_retry.is_alive():
            self._dead_retry = threading.Thread(
                target=self._retry_dead, name='rpc-dead-letter', daemon=True)
            self._dead_retry.start()

    def _retry_dead(self):
        while not self._stop.wait(_DEAD_RETRY):
            try:
                conn = self.broker.connect_once()
            except Exception as e:  # noqa: BLE001 - try again later
                LOG.debug('Dead-letter queue: no broker connection: %s', e)
                continue
            try:
                error = topology.declare_dead(conn, self.conf)
            except Exception as e:  # noqa: BLE001 - e.g. the connection broke
                error = e
            finally:
                transport.close_quietly(conn)
            if error is None:
                LOG.info('Dead-letter queue %s declared',
                         topology.names(self.conf)['dead_queue'])
                return
            LOG.debug('Dead-letter queue still unavailable: %s', error)

    def _flush_on_stop(self, amqp_conn):
        if self._inflight:
            LOG.warning('%d requests unfinished at stop; left unacked for '
                        'redelivery', len(self._inflight))
        end = time.monotonic() + 5
        while self.publisher.waiting() and time.monotonic() < end:
            self._finish_jobs()
            self.publisher.pump()
            self._wait_io(amqp_conn, limit=0.2)
            self._more = iowait.drain(amqp_conn, self._settle, self._reader)
            self._start_ready()
        self._finish_jobs(wait=True)
        self._finish_jobs(wait=True)   # what finished during the last one

    def _wait_io(self, amqp_conn, limit=1.0):
        timeout = limit
        if self._more or self._ready or not (self._completions.empty()
                                             or self._committer.busy()):
            timeout = 0
        for due in (self.publisher.next_due(),
                    jobs.next_beat_in(self._beating.values())):
            if due is not None:
                timeout = min(timeout, due)
        return self._waker.wait(amqp_conn.sock, timeout)

    # ---------------------------------------------------------- requests

    def _on_message(self, message, shared=False):
        """Every message gets its verdict here: queued as work, answered
        (from the journal, or as invalid) or dead-lettered, in time and
        memory bounded by ``self.limits`` whatever the body holds."""
        gen, tag = self._settle.gen, message.delivery_tag
        self._settle.delivered(tag)
        self.stats['received'] += 1
        if self._stop.is_set():
            return  # not started: left unacked, requeued when we close
        try:
            request = envelope.decode_request(message.body, self.limits)
        except envelope.DecodeError as e:
            # The body could hold anything: its size is all that is logged.
            self._dead_letter(tag, 'Undecodable message of %d bytes '
                              'dead-lettered: %s' % (len(message.body), e))
            return
        except Exception:  # noqa: BLE001 - a bug must not wedge the queue
            LOG.exception('Decoding a message of %d bytes failed',
                          len(message.body))
            self._dead_letter(tag, 'Message dead-lettered')
            return
        if shared and request.problem is None and \
                request.method not in topology.SHARED_METHODS:
            request.problem = exception.InvalidRequest(
                'method', '%s is not served from the shared queue or the '
                'fanout: only %s are; an instance method must come through '
                '%s' % (limits_mod.safe_text(request.method),
                        ', '.join(sorted(topology.SHARED_METHODS)),
                        topology.names(self.conf)['host_queue']))
        if LOG.isEnabledFor(logging.DEBUG):
            LOG.debug('Received %s%s', envelope.summary(request),
                      ' (redelivered)' if message.delivery_info.get(
                          'redelivered') else '')
        labelled(METRICS.received, request.method).inc()
        uid = request.unique_id or 'nouid-' + envelope.new_id()
        job = self._inflight.get(uid)
        if job is not None:
            self.stats['duplicates'] += 1
            LOG.info('Duplicate of running request %s: settled when it ends',
                     envelope.summary(request))
            job.add_delivery(gen, tag, request)
            if job.next_beat is not None:
                self._beating[uid] = job
            return
        job = jobs.Job(uid, request)
        job.add_delivery(gen, tag, request)
        done = self.journal.lookup(uid) if request.unique_id else None
        if done and done['status'] == 'done':
            self.stats['duplicates'] += 1
            LOG.info('Request %s already done; answering from the journal',
                     envelope.summary(request))
            job.instance_uuid = done['instance_uuid']
            self._complete(job, done['result_json'], done['failure'])
            return
        if request.problem is None and request.method not in self._unheld \
                and (self._held or self._admitted >= self._admit_max):
            if request.method in self._on_arrival and not self._check(job):
                return
            self._inflight[uid] = job       # a duplicate joins it
            if job.next_beat is not None:
                self._beating[uid] = job    # a held call is beaten too
            self._held.append(job)
            return
        self._admit(job)

    def _admit(self, job):
        """Validate (and plan) ``job`` unless done, and queue it for
        ``_start_ready``; an invalid one gets its verdict now."""
        if job.args is None and not self._check(job):
            return
        if job.key is not None:
            self._admitted += 1
        self._inflight[job.uid] = job
        if job.next_beat is not None:
            self._beating[job.uid] = job
        self._running_rows.append((time.monotonic(), (
            job.uid, job.request.method, job.instance_uuid)))
        self._ready.append(job)   # started after the drain: _start_ready

    def _check(self, job):
        """``dispatcher.validate`` and ``key``; False (the verdict given)
        when invalid."""
        request = job.request
        try:
            if request.problem is not None:
                raise request.problem
            envelope.check_request(request)
            job.args = self.dispatcher.validate(request.method, request.args,
                                                request.version)
        except Exception as e:  # noqa: BLE001 - invalid, whatever the cause
            self._invalid(job, e)
            return False
        try:
            job.key = self.dispatcher.key(request.method, job.args)
        except Exception:  # noqa: BLE001
            LOG.exception('key() failed for %s', envelope.summary(request))
        job.instance_uuid = job.key or jobs.instance_uuid_of(
            self.dispatcher, request.method, job.args)
        return True

    def _admit_held(self):
        """Admit held requests, oldest first, while there is room."""
        if not self._held or self._stop.is_set():
            return
        while self._held and self._admitted < self._admit_max:
            self._admit(self._held.popleft())
        self._start_ready()

    def _start_ready(self):
        """Start the requests of this turn's drain. Held back until the
        socket is drained, so that workers do not contend for the GIL with
        the consume thread while it reads."""
        ready, self._ready = self._ready, []
        for job in ready:
            if job.key is None and job.request.method in self._inline:
                self._work(job)   # answered this turn: no thread hop
            else:
                self.executor.submit(job.key, lambda job=job: self._work(job))

    def _dead_letter(self, tag, text):
        self.stats['dead_lettered'] += 1
        labelled(METRICS.rejected, '-').inc()
        LOG.error('%s', text)
        self._settle.reject(tag)

    def _invalid(self, job, error):
        request = job.request
        self.stats['invalid'] += 1
        if isinstance(error, exception.AgentError):
            LOG.warning('Invalid request %s: %s', envelope.summary(request),
                        error)
        else:
            LOG.exception('Validation of %s failed', envelope.summary(request))
        uuid = getattr(error, 'uuid', None) or jobs.instance_uuid_of(
            self.dispatcher, request.method, request.args)
        if uuid:
            self.executor.submit(None, lambda: self.dispatcher.report_invalid(
                request.method, uuid, error, request.context))
        if request.is_call:
            job.instance_uuid = uuid
            self._complete(job, 'null', envelope.serialize_failure(error))
        else:
            self.stats['dead_lettered'] += 1
            labelled(METRICS.rejected, request.method).inc()
            # A held one was in the books, and may have copies.
            self._inflight.pop(job.uid, None)
            self._beating.pop(job.uid, None)
            self._settle.reject_all(job.deliveries)

    def _work(self, job):
        """Worker thread: run the request, hand the outcome back."""
        if self._stop.is_set():
            # Stopping: what has not started stays unacked, for redelivery.
            self._skipped.put(job)
            self._waker.wake()
            return
        request = job.request
        result_json, failure = 'null', None
        outcome, started = 'success', time.monotonic()
        try:
            with log.request_context(request.context.get('request_id'),
                                     job.instance_uuid):
                result = self.dispatcher.dispatch(request.method, job.args,
                                                  request.context)
            result_json = json.dumps(result)  # not JSON-able: a failure
        except exception.AgentError as e:
            LOG.info('%s failed: %s: %s', envelope.summary(request),
                     type(e).__name__, e)
            outcome, failure = type(e).__name__, envelope.serialize_failure(e)
        except BaseException as e:  # noqa: BLE001 - even SystemExit: a failure
            LOG.exception('%s failed unexpectedly', envelope.summary(request))
            outcome, failure = type(e).__name__, envelope.serialize_failure(e)
        labelled(METRICS.latency, request.method, outcome).observe(
            time.monotonic() - started)
        self._complete(job, result_json, failure)

    def _complete(self, job, result_json, failure):
        job.result_json, job.failure = result_json, failure
        self._completions.put(job)
        if threading.get_ident() != self._consume_ident:
            self._waker.wake()   # the consume thread looks before it sleeps

    # ------------------------------------------------- outcomes and acks

    def _finish_jobs(self, wait=False):
        """Answer read-only requests; settle committed batches; hand what
        finished to the committer (one transaction) unless it is busy.

        The replies, the outcomes and the deletion of confirmed (or
        dropped) outbox rows are one journal commit; the journal hands the
        replies to the publisher, which sends them after the acks.
        Read-only (keyless) requests are answered at once and recorded
        lazily, with the next commit or within _RUNNING_FLUSH s: were
        their outcomes lost, their redeliveries run them again, harmless.
        ``wait``: commit everything now and settle it (stopping, tests).
        """
        self._settle_commits()
        try:
            while True:
                job = self._completions.get_nowait()
                job.ended = True
                job.next_beat = None     # finished: no more call-monitor beats
                self._beating.pop(job.uid, None)
                if job.key is not None:
                    self._admitted -= 1
                    self._keyed.append(job)
                    continue
                self._answer_now(job)
                if not self._lazy:
                    self._lazy_since = time.monotonic()
                self._lazy.append((job, len(job.replies)))
        except queue.Empty:
            pass
        if self._committer.busy():
            if not wait:
                return     # what finished meanwhile joins the next group
            self._committer.wait_idle()
            self._settle_commits()
        now = time.monotonic()
        running, lazy, keyed = self._running_rows, self._lazy, self._keyed
        if not (keyed or self.publisher.has_settled() or (
                running and now - running[0][0] > _RUNNING_FLUSH)
                or (lazy and (wait or self._stop.is_set()
                              or now - self._lazy_since > _RUNNING_FLUSH
                              or len(lazy) >= self._lazy_max))):
            return
        # Replies of state-changing calls go in the outbox with their
        # outcomes: the journal hands them over once both are on disk.
        replies = [outbox.Message(
            outbox.REPLY, '', reply_q,
            envelope.reply_body(msg_id, job.result_json, job.failure))
            for job in keyed for msg_id, reply_q in job.replies]
        self._lazy, self._keyed = [], []
        jobs_ = keyed + [job for job, _ in lazy]
        due, self._running_rows = commits.due_running(
            running, {j.uid for j in jobs_},
            None if wait or self._stop.is_set() else now - _RUNNING_FLUSH)
        confirmed, dropped = self.publisher.take_settled()
        self._committer.submit(commits.Batch(
            jobs_, [len(j.replies) for j in keyed] + [n for _, n in lazy],
            due, replies,
            confirmed, dropped,
            # Keyless requests are read-only (Dispatcher.key contract):
            # running one again after a power cut is harmless.
            durable=bool(keyed)))
        if wait:
            self._committer.wait_idle()
            self._settle_commits()

    def _answer_now(self, job):
        """Reply to a read-only request before its outcome is recorded."""
        if job.replies:
            self.journal.send([outbox.Message(
                outbox.REPLY, '', reply_q,
                envelope.reply_body(msg_id, job.result_json, job.failure),
                durable=False) for msg_id, reply_q in job.replies],
                sync=False)
            self.publisher.pump()

    def _settle_commits(self):
        """Ack the jobs of committed batches; take failed ones back."""
        for batch in self._committer.take():
            if batch.error is not None:
                # Not recorded, so not acked: tried again next turn (the
                # read-only ones answered already).
                self.publisher.untake(batch.confirmed, batch.dropped)
                self._running_rows = [(0.0, row) for row in batch.running
                                      ] + self._running_rows
                for job, replied in zip(batch.jobs, batch.replied):
                    if job.key is not None:
                        self._keyed.append(job)
                    else:
                        self._lazy.append((job, replied))
                continue
            late, acked = [], collections.Counter()
            for job, replied in zip(batch.jobs, batch.replied):
                # A call delivered again while its outcome was committed:
                # answer it too (on a crash, its redelivery is answered
                # from the journal).
                late += [outbox.Message(
                    outbox.REPLY, '', reply_q, envelope.reply_body(
                        msg_id, job.result_json, job.failure), durable=False)
                    for msg_id, reply_q in job.replies[replied:]]
                self._inflight.pop(job.uid, None)
                self._beating.pop(job.uid, None)
                acked[job.request.method] += 1
            for method, n in acked.items():
                labelled(METRICS.acked, method).inc(n)
            if late:
                self.journal.send(late, sync=False)
            self.stats['completed'] += len(batch.jobs)
            self._settle.ack([d for job in batch.jobs
                              for d in job.deliveries])

    def _send_call_heartbeats(self):
        """Call-monitor: ``ending: false`` every _timeout/2 s while running."""
        for msg_id, reply_q in jobs.beats_due(self._beating.values()):
            self.publisher.publish(
                outbox.BEAT, '', reply_q,
                envelope.reply_body(msg_id, ending=False), durable=False)

