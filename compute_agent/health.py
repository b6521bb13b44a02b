"""Is the agent alive, and what is it waiting for?

Two different questions, kept apart on purpose:

* **liveness** (feeds ``WATCHDOG=1`` and ``/healthz``'s status code): the
  agent's own loops run - the consume thread (connected and turning, or in
  its reconnect policy), the worker threads and the periodic tasks. A
  broker or libvirtd outage is not a liveness failure: restarting the agent
  would only kill in-flight work and fix nothing.
* **dependencies** (``STATUS=`` lines, ``/healthz``'s body, the gauges):
  broker connected, libvirt answering, outbox depth. libvirt is probed by
  its own periodic task, so a hung libvirtd never blocks the watchdog.
"""

import logging
import threading

from compute_agent.metrics import METRICS

LOG = logging.getLogger(__name__)


class Health:

    def __init__(self, server, driver, journal, runner, notifier, serving):
        self.server = server
        self.driver = driver
        self.journal = journal
        self.runner = runner
        self.sd = notifier
        self.serving = serving        # 'topic.host', for STATUS lines
        self.libvirt_ok = None        # unknown until the first probe
        self.outbox = 0
        self.stopping = False         # draining: the loops end on purpose
        self._status = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ probes

    def probe(self):
        """Periodic task: outbox depth, gauges, then libvirt answering (last:
        a hung libvirtd delays nothing but its own gauge)."""
        try:
            self.outbox = self.journal.outbox_count()
            if METRICS.enabled:     # the gauge is all the count is for
                METRICS.set_instance_counts(self.journal.count_by_vm_state())
        except Exception:  # noqa: BLE001 - the journal is closing
            LOG.debug('journal unavailable for the gauges', exc_info=True)
        METRICS.broker_connected.set(1 if self.server.connected else 0)
        METRICS.outbox_depth.set(self.outbox)
        self.libvirt_ok = bool(self.driver.healthy())
        METRICS.libvirt_connected.set(1 if self.libvirt_ok else 0)
        self.update_status()

    def problems(self):
        """Reasons the agent is not alive; empty when it is."""
        problems = []
        reason = self.server.liveness_problem()
        if reason:
            problems.append(reason)
        dead = self.runner.dead()
        if dead:
            problems.append('periodic tasks died: %s' % ', '.join(dead))
        return problems

    def snapshot(self):
        """What /healthz shows."""
        problems = self.problems()
        return {
            'alive': not problems,
            'problems': problems,
            'broker': 'connected' if self.server.connected else 'waiting',
            'libvirt': {None: 'unknown', True: 'connected',
                        False: 'unreachable'}[self.libvirt_ok],
            'outbox_depth': self.outbox,
        }

    # ----------------------------------------------------------- systemd

    def status_text(self):
        if self.server.connected:
            text = 'serving %s' % self.serving
        else:
            text = 'waiting for the broker (%s)' % self.broker_address()
        if self.libvirt_ok is False:
            text += '; waiting for libvirt (%s)' % self.driver_uri()
        if self.outbox:
            text += '; %d messages in the outbox' % self.outbox
        return text

    def update_status(self):
        """Send STATUS= when it changed."""
        if self.stopping:
            return
        text = self.status_text()
        with self._lock:
            if text == self._status:
                return
            self._status = text
        LOG.info('status: %s', text)
        self.sd.status(text)

    def watchdog(self):
        """Periodic task: WATCHDOG=1 only while the agent's loops are alive."""
        if self.stopping:
            self.sd.watchdog()
            return
        problems = self.problems()
        self.update_status()
        if problems:
            LOG.error('not alive, withholding the watchdog ping: %s',
                      '; '.join(problems))
            self.sd.status('not alive: %s' % '; '.join(problems))
            return
        self.sd.watchdog()

    def broker_address(self):
        hosts = getattr(getattr(self.server.broker, 'url', None), 'hosts', ())
        return ', '.join('%s:%s' % (h.hostname, h.port) for h in hosts) or '?'

    def driver_uri(self):
        from compute_agent.conf import libvirt as libvirt_conf
        try:
            return libvirt_conf.connection_uri(self.driver.conf)
        except Exception:  # noqa: BLE001 - a test double without conf
            return 'libvirtd'
