"""The agent's libvirt connections, kept alive across libvirtd restarts.

libvirtd is restarted by package upgrades and crashes; the agent must not
need a restart too. So connections are opened lazily (the agent starts
even while libvirtd is down), retried with backoff (a starting libvirtd
answers within seconds), and re-opened when they turn out dead: a close
callback marks the primary one as soon as the socket drops, and a call that
fails with a connection-type error on a dead connection is re-run once on a
new one.

There is a pool of them (``[libvirt] connection_pool_size``, by default
one per concurrent operation plus two), opened as they are first needed.
Each call takes an idle connection when there is one, else the least busy:
a short call queued on a connection that has a slow ``create()`` in flight
waits on it (80-600 ms measured in a burst of 10 spawns; ~0 ms on an idle
connection), and libvirtd serves at most ``max_client_requests`` (5) calls
of one client at a time. The first connection (the primary) also carries
the event callbacks.

Lifecycle events need libvirt's event loop: ``virEventRegisterDefaultImpl``
must run before the first connection is opened and ``virEventRunDefaultImpl``
must be called continuously, here in one daemon thread per process. Event
callbacks run in that thread, so they only enqueue; a worker thread maps the
event to a power state and calls the owner's ``on_power_event(uuid, state)``
(which may be slow: it publishes to RabbitMQ).
"""

import logging
import queue
import threading

import libvirt
import tenacity

from compute_agent import exception
from compute_agent.metrics import METRICS
from compute_agent.states import CRASHED, PAUSED, RUNNING, SHUTDOWN, SUSPENDED
from compute_agent.conf import libvirt as libvirt_conf

LOG = logging.getLogger(__name__)

RETRY_INTERVAL_MAX = 10.0
# Error codes a call on a connection to a vanished libvirtd fails with
# ("End of file while reading data", "client socket is closed", ...). They
# also mean real failures, so the connection's liveness decides.
CONNECTION_ERRORS = (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                     libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN)


# Lifecycle event -> power state; None: not a power change (defined,
# undefined, "guest asked to shut down" which is followed by STOPPED).
_EVENT_STATES = {
    libvirt.VIR_DOMAIN_EVENT_STARTED: RUNNING,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: RUNNING,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: PAUSED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: CRASHED,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: SUSPENDED,
}

_event_loop_lock = threading.Lock()
_event_loop_thread = None


def _ignore_libvirt_errors(_ctx, _err):
    """libvirt prints every error to stderr by default; they are raised anyway."""


def start_event_loop():
    """Register libvirt's default event loop and run it (once per process)."""
    global _event_loop_thread
    with _event_loop_lock:
        if _event_loop_thread is not None:
            return
        libvirt.registerErrorHandler(_ignore_libvirt_errors, None)
        libvirt.virEventRegisterDefaultImpl()

        def run():
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:           # never let the loop die
                    LOG.exception('libvirt event loop iteration failed')

        _event_loop_thread = threading.Thread(
            target=run, name='libvirt-event-loop', daemon=True)
        _event_loop_thread.start()


def event_power_state(event, detail):
    """The power state a lifecycle event leads to, or None."""
    if (event == libvirt.VIR_DOMAIN_EVENT_STOPPED
            and detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED):
        return SUSPENDED          # managed save: the guest is suspended
    return _EVENT_STATES.get(event)


def is_connection_error(exc):
    return (isinstance(exc, libvirt.libvirtError)
            and exc.get_error_code() in CONNECTION_ERRORS)


def pool_size(conf):
    """``[libvirt] connection_pool_size``, 0 resolved to its default."""
    return conf.libvirt.connection_pool_size or conf.max_concurrent_builds + 2


class _Slot:
    """One pooled connection and the number of calls running on it."""

    def __init__(self, primary):
        self.primary = primary
        self.conn = None
        self.busy = 0
        self.lock = threading.Lock()      # serialises (re)opening


class Connection:
    """Lazily opened, self-healing connections to ``connection_uri(conf)``.

    ``get()`` returns the live primary ``virConnect``; ``call(fn)`` runs
    ``fn(conn)`` on the least busy pooled connection and re-runs it once on a
    fresh connection when the first one died under it. Both raise
    ``HypervisorUnavailable`` when libvirtd does not answer within
    ``[libvirt] connect_retries`` attempts.
    """

    def __init__(self, conf, on_power_event=None, on_agent_event=None):
        self.conf = conf
        self.uri = libvirt_conf.connection_uri(conf)
        self.on_power_event = on_power_event
        # on_agent_event(uuid, connected, domain_started): the guest agent's
        # channel opened or closed (VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE).
        self.on_agent_event = on_agent_event
        self._agent_callback_id = None
        size = pool_size(conf)
        if self.uri.startswith('test:') and self.uri != 'test:///default':
            size = 1            # each connection would be its own mock host
        self._slots = [_Slot(primary=i == 0) for i in range(size)]
        self._callback_id = None
        self._lock = threading.Lock()      # slot busy counters
        self._closed = False
        self._events = queue.Queue()
        self._worker = None
        self.reconnects = 0          # connections re-opened after a loss

    # -- opening -------------------------------------------------------------
    def get(self):
        """The primary connection, opening (retrying) a new one when needed."""
        return self._live(self._slots[0])

    def _live(self, slot, retry=True):
        conn = slot.conn
        if conn is not None and self._alive(conn):
            return conn
        attempts = max(1, self.conf.libvirt.connect_retries) if retry else 1
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=tenacity.wait_exponential(
                multiplier=self.conf.libvirt.connect_retry_interval,
                max=RETRY_INTERVAL_MAX),
            retry=tenacity.retry_if_exception_type(libvirt.libvirtError),
            before_sleep=tenacity.before_sleep_log(LOG, logging.WARNING),
            reraise=True)
        try:
            return retrying(self._open_once, slot)
        except libvirt.libvirtError as e:
            raise exception.HypervisorUnavailable(
                uri=self.uri, reason=e.get_error_message()) from e

    def _open_once(self, slot):
        # The lock is held per attempt only, never across a backoff sleep.
        with slot.lock:
            if self._closed:
                raise exception.HypervisorUnavailable(
                    uri=self.uri, reason='connection closed by the agent')
            if slot.conn is not None and self._alive(slot.conn):
                return slot.conn          # another thread reopened it
            start_event_loop()
            if slot.primary:
                self._start_worker()
            conn = libvirt.open(self.uri)
            old, slot.conn = slot.conn, conn
            if old is not None:
                self.reconnects += 1
                METRICS.reconnects.labels('libvirt').inc()
                LOG.warning('Reconnected to libvirt at %s', self.uri)
                self._forget(old, slot.primary)
            self._register(conn, slot.primary)
            return conn

    @staticmethod
    def _alive(conn):
        try:
            return conn.isAlive() == 1
        except libvirt.libvirtError:
            return False

    def _register(self, conn, primary):
        """Callbacks live on one connection: set them up on each new primary."""
        try:
            conn.setKeepAlive(5, 3)
        except libvirt.libvirtError:
            pass            # local (non-remote) drivers have no keepalive
        if not primary:
            return
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError as e:
            LOG.debug('No close callback on %s: %s', self.uri, e)
        self._callback_id = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None)
        if self.on_agent_event is not None:
            try:
                self._agent_callback_id = conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
                    self._on_agent_lifecycle, None)
            except libvirt.libvirtError as e:   # drivers without the event
                LOG.debug('No guest agent events on %s: %s', self.uri, e)
                self._agent_callback_id = None

    def _forget(self, conn, primary):
        """Drop a dead connection; its callbacks may already be gone."""
        steps = [conn.close]
        if primary:
            steps[:0] = [lambda: conn.domainEventDeregisterAny(self._callback_id),
                         conn.unregisterCloseCallback]
            if self._agent_callback_id is not None:
                steps[:0] = [lambda: conn.domainEventDeregisterAny(
                    self._agent_callback_id)]
        for fn in steps:
            try:
                fn()
            except libvirt.libvirtError:
                pass

    # -- calls ---------------------------------------------------------------
    def call(self, fn, retry=True):
        """``fn(conn)`` on the least busy connection; re-run once on a new
        connection if that one died. Objects ``fn`` returns (domains) stay
        usable: pooled connections are only closed when they are dead.
        ``retry=False`` makes one connection attempt instead of
        ``[libvirt] connect_retries``."""
        with self._lock:
            slot = min(self._slots, key=lambda s: s.busy)   # ties: the primary
            slot.busy += 1
        try:
            conn = self._live(slot, retry)
            try:
                return fn(conn)
            except libvirt.libvirtError as e:
                if not is_connection_error(e) or self._alive(conn):
                    raise
                LOG.warning('libvirt connection lost (%s); reconnecting', e)
            return fn(self._live(slot, retry))
        finally:
            with self._lock:
                slot.busy -= 1

    def dedicated(self, fn):
        """``fn(conn)`` on a connection of its own, closed when it returns.

        For guest-agent commands (virt/guest_agent.py): libvirtd serves at
        most ``max_client_requests`` calls of one connection at a time, so a
        call stuck until its agent deadline on a pooled connection would take
        a slot the guests' other operations need. One attempt, no retries:
        the caller has a deadline of its own.
        """
        if self._closed:
            raise exception.HypervisorUnavailable(
                uri=self.uri, reason='connection closed by the agent')
        start_event_loop()
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as e:
            raise exception.HypervisorUnavailable(
                uri=self.uri, reason=e.get_error_message()) from e
        try:
            return fn(conn)
        finally:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def close(self):
        """Stop delivering events and close every connection."""
        self._closed = True
        for slot in self._slots:
            with slot.lock:
                conn, slot.conn = slot.conn, None
            if conn is not None:
                self._forget(conn, slot.primary)
        self._events.put(None)

    # -- events (the event loop thread only enqueues) -------------------------
    def _on_lifecycle(self, _conn, dom, event, detail, _opaque):
        try:
            self._events.put(('lifecycle', dom.UUIDString(), event, detail))
        except Exception:     # an exception here would end up in libvirt's C code
            LOG.exception('Dropped a lifecycle event')

    def _on_agent_lifecycle(self, _conn, dom, state, reason, _opaque):
        try:
            self._events.put((
                'agent', dom.UUIDString(),
                state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED,
                reason == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED))
        except Exception:
            LOG.exception('Dropped a guest agent event')

    def _on_close(self, _conn, reason, _opaque):
        self._events.put(('closed', reason))

    def _start_worker(self):
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._work, name='libvirt-events', daemon=True)
            self._worker.start()

    def _work(self):
        while True:
            item = self._events.get()
            if item is None:
                return
            try:
                if item[0] == 'lifecycle':
                    self._deliver(*item[1:])
                elif item[0] == 'agent':
                    LOG.debug('Guest agent event of %s: connected=%s '
                              'domain_started=%s', *item[1:])
                    self.on_agent_event(*item[1:])
                else:
                    self._reopen_after_close(item[1])
            except Exception:
                LOG.exception('Handling libvirt event %r failed', item)

    def _deliver(self, uuid, event, detail):
        state = event_power_state(event, detail)
        LOG.debug('Lifecycle event %s/%s of %s -> power state %s',
                  event, detail, uuid, state)
        if state is not None and self.on_power_event is not None:
            self.on_power_event(uuid, state)

    def _reopen_after_close(self, reason):
        """libvirtd went away: reopen so events resume without a caller.

        Retried with the same backoff, forever, until it works or the agent
        closes the connection; a caller's ``get()`` may win the race, which
        is fine (the second one finds a live connection).
        """
        LOG.warning('libvirt connection to %s closed (reason %s)', self.uri, reason)
        delay = max(self.conf.libvirt.connect_retry_interval, 0.1)
        while not self._closed:
            try:
                self.get()
                return
            except exception.HypervisorUnavailable as e:
                LOG.warning('libvirt still unavailable: %s', e.message)
            except Exception:
                LOG.exception('Reconnecting to libvirt failed')
            threading.Event().wait(delay)
            delay = min(delay * 2, RETRY_INTERVAL_MAX)
